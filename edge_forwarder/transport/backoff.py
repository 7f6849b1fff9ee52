"""Exponential backoff with full jitter, so many forwarders do not retry in lockstep."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2 ** min(attempt, 30))))


@dataclass(frozen=True)
class RetryPolicy:
    """How often a delivery target is tried, and how long to wait in between."""

    attempts: int
    backoff: Backoff


def retry(
    action: Callable[[], T],
    *,
    should_retry: Callable[[BaseException], bool],
    backoff: Backoff,
    max_attempts: int | None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    stop: threading.Event | None = None,
) -> T:
    """Call `action` until it succeeds, a non-retryable error, `max_attempts` or `stop`."""
    attempt = 0
    while True:
        try:
            return action()
        except Exception as error:
            attempt += 1
            if not should_retry(error) or (max_attempts is not None and attempt >= max_attempts):
                raise
            wait = backoff.delay(attempt)
            if on_retry is not None:
                on_retry(attempt, error, wait)
            if stop is not None:
                if stop.wait(wait):
                    raise
            else:
                threading.Event().wait(wait)
