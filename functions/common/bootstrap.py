"""Build each function's service once per process from its settings (tests can rebuild)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TypedDict, TypeVar

from functions.common.adapters import SiteNotifier, StudyObjectStore
from functions.common.settings import CommonSettings
from imaging_ai import envelope
from imaging_ai.aws import client, reset_clients
from imaging_ai.state import RunStateStore

T = TypeVar("T")
_CACHED: list[Callable[[], object]] = []
_LEASE_MARGIN_S = 5.0


def once(factory: Callable[[], T]) -> Callable[[], T]:
    """Cache a factory for the life of the process; `reset()` forgets every one."""
    cached = cache(factory)
    _CACHED.append(cached)
    return cached


def reset() -> None:
    """Forget settings, clients and services (tests point the functions at a fresh server)."""
    for cached in _CACHED:
        cached.cache_clear()  # type: ignore[attr-defined]
    reset_clients()
    envelope.reset_providers()


def lease_seconds(context: object) -> float:
    """A run's work lease lasts as long as this invocation could still run, plus a margin."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", lambda: 900_000)()
    return float(remaining_ms) / 1000.0 + _LEASE_MARGIN_S


class Adapters(TypedDict):
    """What every function's service gets: study objects, run state, the sites' queues."""

    store: StudyObjectStore
    state: RunStateStore
    notifier: SiteNotifier


def adapters(settings: CommonSettings) -> Adapters:
    return Adapters(
        store=object_store(settings), state=state_store(settings), notifier=site_notifier(settings)
    )


def object_store(settings: CommonSettings) -> StudyObjectStore:
    return StudyObjectStore(client("s3"), settings.data_bucket, settings.kms_key_arn)


def state_store(settings: CommonSettings) -> RunStateStore:
    return RunStateStore(client("dynamodb"), settings.state_table)


def site_notifier(settings: CommonSettings) -> SiteNotifier:
    return SiteNotifier(client("sqs"), settings.site_results_queues)
