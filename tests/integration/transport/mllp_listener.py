"""A real MLLP listener for the HL7 tests: the `hl7` package's asyncio server on loopback.

It answers each message from a script: an ACK code (AA, AE, AR), or DROP to close the
connection without answering (a receiver that crashes or a firewall that cuts the link).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import hl7
import hl7.mllp

DROP = "DROP"


@dataclass
class MllpListener:
    port: int = 0
    script: list[str] = field(default_factory=list)  # answers in order; then AA
    received: list[str] = field(default_factory=list)  # every message, as received

    async def _handle(
        self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter
    ) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                answer = self.script.pop(0) if self.script else "AA"
                if answer == DROP:
                    break
                writer.writemessage(message.create_ack(ack_code=answer))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the client closed after its ACK
        finally:
            writer.close()


@contextmanager
def mllp_listener() -> Iterator[MllpListener]:
    """Start the listener on 127.0.0.1 (a free port) in its own event-loop thread."""
    listener = MllpListener()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopping: asyncio.Future[None] | None = None

    async def serve() -> None:
        nonlocal stopping
        server = await hl7.mllp.start_hl7_server(listener._handle, host="127.0.0.1", port=0)
        listener.port = server.sockets[0].getsockname()[1]
        stopping = loop.create_future()
        started.set()
        async with server:
            await stopping

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("MLLP listener did not start")
    try:
        yield listener
    finally:
        assert stopping is not None
        loop.call_soon_threadsafe(stopping.set_result, None)
        thread.join(10)
        loop.close()
