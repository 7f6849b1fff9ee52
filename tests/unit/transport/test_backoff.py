"""Backoff: full jitter under the cap; retry stops on non-retryable errors and max attempts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edge_forwarder.transport.backoff import Backoff, retry


def test_delays_are_jittered_and_capped() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    delays = [backoff.delay(attempt) for attempt in range(1, 50)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) == len(delays)


def _always_raising(error: Exception) -> tuple[list[int], Callable[[], None]]:
    """A call that raises `error` every time, and the list its calls are counted in."""
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise error

    return calls, fail


def test_retry_gives_up_after_max_attempts() -> None:
    calls, fail = _always_raising(OSError("down"))
    with pytest.raises(OSError):
        retry(fail, should_retry=lambda e: True, backoff=Backoff(0.0, 0.0), max_attempts=3)
    assert len(calls) == 3


def test_retry_does_not_retry_permanent_errors() -> None:
    calls, fail = _always_raising(ValueError("4xx"))
    with pytest.raises(ValueError):
        retry(
            fail, should_retry=lambda e: isinstance(e, OSError), backoff=Backoff(), max_attempts=9
        )
    assert len(calls) == 1
