"""Group commit: stores that wait at the same time share one journal transaction and fsync."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class _Slot(Generic[Request, Result]):
    __slots__ = ("done", "error", "request", "result")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[Request, Result]):
    """Leader / follower: the first caller to find no commit running commits every queued request.

    `apply` gets the batch and returns one result or exception per request, in order. While it
    runs, new requests queue up and go together in the next batch: with one association a batch
    holds one store, with several they share the directory fsync and the WAL fsync.
    """

    def __init__(self, apply: Callable[[list[Request]], list[Result | BaseException]]) -> None:
        self._apply = apply
        self._cond = threading.Condition()
        self._queue: list[_Slot[Request, Result]] = []
        self._leading = False

    def submit(self, request: Request) -> Result:
        slot: _Slot[Request, Result] = _Slot(request)
        with self._cond:
            self._queue.append(slot)
            while not slot.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _run(self, batch: list[_Slot[Request, Result]]) -> None:
        try:
            outcomes = self._apply([slot.request for slot in batch])
        except BaseException as error:  # the whole transaction failed: every store hears it
            outcomes = [error] * len(batch)
        for slot, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                slot.error = outcome
            else:
                slot.result = outcome
            slot.done = True
