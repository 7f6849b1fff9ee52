"""The forwarder's run loop: outbound and inbound, each on a thread of its own."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_forwarder.inbound import Inbound
from edge_forwarder.observability import Telemetry, log_event
from edge_forwarder.outbound import Outbound


@dataclass
class ForwarderService:
    """Two loops on two threads, so an S3 outage never holds results back from PACS or EHR."""

    outbound: Outbound
    inbound: Inbound
    telemetry: Telemetry
    stop_event: threading.Event  # shared with both loops: set, they finish their step and end
    poll_interval_s: float = 2.0
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def start(self) -> None:
        for name, tick in (("outbound", self.outbound.tick), ("inbound", self.inbound.tick)):
            thread = threading.Thread(target=self._loop, args=(name, tick), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _loop(self, name: str, tick: Callable[[], None]) -> None:
        while not self.stop_event.is_set():
            try:
                tick()
                self.telemetry.health.tick()
                self.telemetry.metrics.last_loop.set_to_current_time()
            except Exception as error:
                frame = traceback.extract_tb(error.__traceback__)[-1]
                # File and line, not the message: a library's message may quote data.
                log_event(
                    "loop_error",
                    logging.ERROR,
                    name=name,
                    error=type(error).__name__,
                    where=f"{Path(frame.filename).name}:{frame.lineno}",
                )
            self.stop_event.wait(self.poll_interval_s)
