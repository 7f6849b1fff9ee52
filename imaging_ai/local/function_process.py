"""A Lambda function's execution environment as a child process: INIT once, then invocations.

Like Lambda, each function runs in its own process with its own memory: the handler module is
imported at start (Lambda's INIT phase), invocations run one at a time, and the process's peak
resident memory is what a function's memory setting must cover. Running the handlers as
threads of one process (the dispatcher's default) hides that figure and lets Powertools'
logger keys of one function bleed into another's log lines.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from imaging_ai.errors import PipelineError
from imaging_ai.local.processes import peak_rss_bytes

# Spawned, not forked: the parent runs threads (dispatchers, watchers, an HTTP server).
_CONTEXT = multiprocessing.get_context("spawn")


class FunctionFailed(PipelineError):
    """The handler raised inside its process (Lambda reports this as a function error)."""


def _serve(connection: Connection, handler_path: str, log_path: str | None) -> None:
    """The child: redirect stdout (CloudWatch's stream) to the log, INIT, then invoke."""
    if log_path is not None:
        log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - process-long
        sys.stdout = sys.stderr = log
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").addHandler(logging.StreamHandler(log))
    from imaging_ai.local.dispatcher import load_handler

    handler = load_handler(handler_path)
    connection.send(("ready", None))
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        event, context = request
        try:
            connection.send(("ok", handler(event, context)))
        except Exception as error:  # reported to the parent, which fails the batch as Lambda
            logging.getLogger(__name__).exception("handler raised")
            connection.send(("error", type(error).__name__))


class FunctionProcess:
    """One function's process; `invoke` is called by its event source mappings' threads."""

    def __init__(self, handler_path: str, function_name: str, log_path: Path | None = None):
        self.handler_path = handler_path
        self.function_name = function_name
        self._log_path = log_path
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._process: Any = None
        self.invocations = 0

    def start(self, timeout_s: float = 120.0) -> FunctionProcess:
        parent, child = _CONTEXT.Pipe()
        log = str(self._log_path) if self._log_path is not None else None
        self._process = _CONTEXT.Process(
            target=_serve,
            args=(child, self.handler_path, log),
            name=f"lambda-{self.function_name}",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._connection = parent
        if not parent.poll(timeout_s):
            self.stop()
            raise PipelineError(f"function {self.function_name} did not finish INIT")
        try:
            parent.recv()
        except EOFError:
            self.stop()
            raise PipelineError(f"function {self.function_name} exited during INIT") from None
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    @property
    def running(self) -> bool:
        return self._process is not None and bool(self._process.is_alive())

    def peak_rss_bytes(self) -> int:
        """High-water mark of the process's resident memory since it started (VmHWM)."""
        return 0 if self.pid is None else peak_rss_bytes(self.pid)

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._lock:
            if self._connection is None:
                raise PipelineError(f"function {self.function_name} is not running")
            self._connection.send((event, context))
            try:
                status, value = self._connection.recv()
            except (EOFError, OSError):
                raise FunctionFailed(f"function {self.function_name} process ended") from None
            self.invocations += 1
        if status != "ok":
            raise FunctionFailed(f"function {self.function_name} raised {value}")
        return value

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError, ValueError):
                self._connection.send(None)
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout_s)
