"""The SCP's network edge: admission, bounded PDUs, TLS off the accept loop, data sets to disk.

pynetdicom as shipped reads a whole PDU of any announced length into memory, decodes every
C-STORE data set into a BytesIO, performs the TLS handshake on the thread that accepts
connections, checks only a global association count, and decodes every P-DATA-TF PDU into
objects before its bytes reach the DIMSE layer. Each class here replaces one of those steps
for the intake's acceptor associations, through pynetdicom's own extension points (the
server's request handler, the association's socket, ACSE, DUL and DIMSE providers).
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from datetime import datetime
from io import BytesIO
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

from edge_forwarder.intake.admission import SenderPolicy
from edge_forwarder.intake.spool import IncomingFile, Spool
from imaging_ai.logs import get_logger

log = get_logger("edge_forwarder.intake")

_P_DATA_TF = 0x04
# A-ASSOCIATE-RQ/AC carry every proposed context: far larger than a P-DATA PDU may be.
_MAX_CONTROL_PDU = 1024 * 1024
# A command set is a handful of elements; anything bigger is not a DIMSE command.
_MAX_COMMAND_SET = 64 * 1024
# Data sets of non-storage messages (none of our services take one) stay in memory.
_MAX_OTHER_DATASET = 64 * 1024
_REACTOR_WAIT_S = 0.02
_DUL_WAIT_S = 0.001
# One recv() per this many bytes at most; pynetdicom's own loop reads 4 KiB at a time.
_RECV_CHUNK = 256 * 1024


class _ProtocolLimit(OSError):
    """The peer broke a limit at the transport level; pynetdicom closes the connection."""


class IntakeServer(ThreadedAssociationServer):
    """The threaded server, with the intake's policy, spool and limits for its associations."""

    policy: SenderPolicy
    spool: Spool
    tls: ssl.SSLContext | None
    max_instance_bytes: int
    max_pdu: int
    pdu_timeout_s: float
    handshake_timeout_s: float
    admission_lock: threading.Lock

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # pynetdicom wraps TLS here, on the accept loop: one peer that connects and never
        # sends a ClientHello would block every other connection. The handshake runs on the
        # connection's own thread instead (`IntakeRequestHandler.handle`).
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address

    def live_senders(self) -> list[str]:
        """The admitted sender of every association still alive on this server."""
        senders = []
        for assoc in self.active_associations:
            acse = assoc.acse
            if assoc.is_aborted or assoc.is_released:
                continue  # its thread is winding down: the slot is free
            if isinstance(acse, IntakeACSE) and acse.sender is not None:
                senders.append(acse.sender)
        return senders


class IntakeRequestHandler(RequestHandler):
    """Per connection: TCP_NODELAY, drop unknown hosts, TLS handshake with a deadline."""

    server: IntakeServer

    def handle(self) -> None:
        raw = cast(socket.socket, self.request)
        # Without it a small PDU after a large one waits ~40 ms for the peer's delayed ACK.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        address = str(self.client_address[0])
        if not self.server.policy.address_known(address):
            log.warning("connection_refused", reason="unknown_address", target=address)
            _close(raw)
            return
        if self.server.tls is not None:
            raw.settimeout(self.server.handshake_timeout_s)
            try:
                self.request = self.server.tls.wrap_socket(raw, server_side=True)
            except (OSError, ValueError) as error:
                log.warning(
                    "connection_refused",
                    reason="tls_handshake_failed",
                    target=address,
                    error=type(error).__name__,
                )
                _close(raw)
                return
            self.request.settimeout(None)
        super().handle()

    def _create_association(self) -> Association:
        # pynetdicom's own body, with our ACSE, DIMSE and socket classes swapped in before the
        # association starts (a socket made twice would queue its connect event twice).
        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.dul = IntakeDUL(assoc)
        # The timeouts live in the DUL's timers: set again for the new one.
        assoc.acse_timeout = assoc.acse_timeout
        assoc.network_timeout = assoc.network_timeout
        assoc.acse = IntakeACSE(assoc, self.server)
        assoc.dimse = SpoolingDIMSE(assoc, self.server.spool, self.server.max_instance_bytes)
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"
        sock = BoundedSocket(assoc, self.request, self.server.max_pdu, self.server.pdu_timeout_s)
        assoc.set_socket(sock)
        assoc.dul._run_loop_delay = 0  # BoundedSocket.ready waits instead
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        handlers = cast(dict[Any, Any], self.server._handlers)
        for event, bound in handlers.items():
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in bound:
                    assoc.bind(event, handler, args)
        assoc.bind(evt.EVT_CONN_CLOSE, _discard_partial)
        return assoc


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _discard_partial(event: Any) -> None:
    dimse = event.assoc.dimse
    if isinstance(dimse, SpoolingDIMSE):
        dimse.discard_partial()


class BoundedSocket(AssociationSocket):
    """Reads PDUs no larger than announced, each within a deadline, in large recv() calls.

    pynetdicom reads the 6-byte PDU header, then `recv(length)` for the body, whatever the
    length; a peer could announce 4 GiB. It also lets a peer that trickles one byte a minute
    hold `recv` (and the association) forever. Both end the connection here.
    """

    def __init__(self, assoc: Association, client: socket.socket, max_pdu: int, timeout_s: float):
        super().__init__(assoc, client_socket=client)
        self._max_pdu = max_pdu
        self._timeout_s = timeout_s
        self._body_limit: int | None = None  # None: the next read is a PDU header
        self._unread: bytearray | None = None  # a PDU header read ahead, see `unread`

    def unread(self, header: bytearray) -> None:
        """Give back a PDU header read ahead: the next `recv(6)` returns it (its body limit,
        set when it was read, still applies)."""
        self._unread = header

    @property
    def ready(self) -> bool:
        # pynetdicom's DUL loop sleeps 1 ms, then polls the socket with a zero timeout: up to
        # 1 ms before each incoming PDU is seen. Waiting in select instead (the loop's own
        # sleep set to 0, see `_create_association`) sees data the moment it arrives, and
        # still comes back within 1 ms to send what the association queued.
        sock = self.socket
        if sock is None or not self._is_connected:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # TLS records already read that select cannot see
        try:
            readable, _, _ = select.select([sock], [], [], _DUL_WAIT_S)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # the connection is gone
            return False
        return bool(readable)

    def recv(self, nr_bytes: int) -> bytearray:
        # pynetdicom reads a PDU as recv(6) for its header, then recv(length) for its body.
        if self._unread is not None:
            header, self._unread = self._unread, None
            if nr_bytes != len(header):
                raise _ProtocolLimit("a PDU header given back was not read as one")
            return header
        limit = 6 if self._body_limit is None else self._body_limit
        self._body_limit = None
        if nr_bytes > limit:
            log.warning("connection_closed", reason="pdu_too_large", bytes=nr_bytes)
            raise _ProtocolLimit("PDU larger than announced")
        data = self._read_exactly(nr_bytes)
        if limit == 6 and len(data) == 6:
            pdu_type = data[0]
            # A P-DATA-TF body may not exceed what we announced (PS3.8 D.1); the others carry
            # the association negotiation and are small.
            self._body_limit = self._max_pdu if pdu_type == _P_DATA_TF else _MAX_CONTROL_PDU
        return data

    def _read_exactly(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        deadline = time.monotonic() + self._timeout_s
        read = 0
        try:
            while read < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("connection_closed", reason="pdu_deadline")
                    raise _ProtocolLimit("PDU not received within the idle timeout")
                sock.settimeout(remaining)
                count = sock.recv_into(view[read:], min(nr_bytes - read, _RECV_CHUNK))
                if count == 0:
                    break  # closed by the peer: pynetdicom sees a short read
                read += count
        except TimeoutError:
            log.warning("connection_closed", reason="pdu_deadline")
            raise _ProtocolLimit("PDU not received within the idle timeout") from None
        finally:
            if self.socket is not None:
                sock.settimeout(None)
        del view
        if read < nr_bytes:
            del buffer[read:]
        return buffer


# (presentation context ID, PDV value: the message control header byte, then the fragment)
Fragment = tuple[int, bytes | memoryview]


class IntakeDUL(DULServiceProvider):
    """pynetdicom's upper layer, with P-DATA-TF PDUs split in place during data transfer.

    In Sta6 a P-DATA-TF PDU changes no state (PS3.8 9.2: Evt10, DT-2, Sta6); pynetdicom still
    copies it into a PDU object, a primitive and its items and runs the state machine, most of
    the Python time a received instance costs. Here its PDV items go to the DIMSE provider as
    views of the received bytes. Other PDUs, and P-DATA-TF in any other state, take
    pynetdicom's path. (EVT_PDU_RECV and EVT_DATA_RECV, debug logging only, are not triggered
    for the PDUs taken here.)
    """

    def _read_pdu_data(self) -> None:
        sock = self.socket
        dimse = self.assoc.dimse
        if (
            not isinstance(sock, BoundedSocket)
            or not isinstance(dimse, SpoolingDIMSE)
            or self.state_machine.current_state != "Sta6"
        ):
            super()._read_pdu_data()
            return
        try:
            header = sock.recv(6)
            if len(header) == 6 and header[0] == _P_DATA_TF:
                body = sock.recv(struct.unpack_from(">L", header, 2)[0])
            else:
                body = None
        except OSError:
            self.event_queue.put("Evt17")  # as pynetdicom: closed, or a limit broken
            return
        if len(header) < 6:
            self.event_queue.put("Evt17")
        elif body is None:
            sock.unread(header)  # not a P-DATA-TF: pynetdicom decodes it
            super()._read_pdu_data()
        elif len(body) != struct.unpack_from(">L", header, 2)[0]:
            self.event_queue.put("Evt17")  # closed mid-PDU
        elif (fragments := pdv_items(body)) is None:
            self.event_queue.put("Evt19")  # invalid PDU: A-ABORT
        else:
            dimse.receive_fragments(fragments)


def pdv_items(body: bytearray) -> list[Fragment] | None:
    """The PDV items of a P-DATA-TF PDU body (PS3.8 9.3.5.1) as views, or None if malformed."""
    view = memoryview(body)
    fragments: list[Fragment] = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or length > end - offset - 4:
            return None
        fragments.append((body[offset + 4], view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return fragments


class IntakeACSE(ACSE):
    """Association negotiation with the sender allow-list and per-sender slots first."""

    def __init__(self, assoc: Association, server: IntakeServer) -> None:
        super().__init__(assoc)
        self._server = server
        self.sender: str | None = None  # set once admitted: counts against the sender's slots

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        assert request is not None
        address = str(self.assoc.requestor.address)
        calling = str(request.calling_ae_title)
        with self._server.admission_lock:
            admission = self._server.policy.admit(
                calling, str(request.called_ae_title), address, self._server.live_senders()
            )
            if admission.refusal is None:
                self.sender = admission.sender
        if admission.refusal is not None:
            log.warning(
                "association_refused",
                reason=admission.refusal.value,
                name=admission.sender,
                target=f"{calling.strip()}@{address}",
            )
            self.send_reject(*admission.refusal.reject)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


class SpoolingDIMSE(DIMSEServiceProvider):
    """Assembles DIMSE messages; a C-STORE data set goes to a spool file as it arrives.

    pynetdicom keeps each data set in a BytesIO (or, with a global switch, a temporary file in
    the system temp folder, with no size limit). Here the size is checked on every fragment
    and a data set over `max_instance_bytes` aborts the association at once.
    """

    def __init__(self, assoc: Association, spool: Spool, max_instance_bytes: int) -> None:
        super().__init__(assoc)
        self._spool = spool
        self._limit = max_instance_bytes
        self._command = bytearray()
        self._pending: DIMSEMessage | None = None  # command decoded, data set to come
        self._incoming: IncomingFile | None = None
        self._other = bytearray()
        self._refused = False
        self._lock = threading.Lock()

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = store_response_command(primitive)
        if command is None or len(command) + 6 > (self.maximum_pdu_size or 1 << 32):
            super().send_msg(primitive, context_id)
            return
        # One C-STORE-RSP per instance: encoded by hand, as pynetdicom's generic encoder (a
        # pydicom data set written per response) cost a fifth of the store path.
        pdata = P_DATA()
        # pynetdicom checks for a list [ID, PDV] although its type hint says tuple.
        pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
        self.dul.send_pdu(pdata)

    def get_msg(self, block: bool = False) -> Any:
        if block:
            return super().get_msg(block=True)
        # The association reactor polls this every millisecond; waiting here instead serves a
        # message the moment it is complete and spares ~1000 wake-ups a second per idle
        # association. Release, abort and idle timeout are still checked every 20 ms.
        try:
            return self.msg_queue.get(timeout=_REACTOR_WAIT_S)
        except queue.Empty:
            return None, None

    def receive_primitive(self, primitive: P_DATA) -> None:
        self.receive_fragments(primitive.presentation_data_value_list)

    def receive_fragments(self, fragments: Sequence[Fragment]) -> None:
        """The PDV items of one P-DATA-TF PDU, in order."""
        if self._refused:
            return  # the association is being aborted: drop what is still in flight
        for context_id, data in fragments:
            control = data[0]
            if control & 1:
                if not self._command_fragment(context_id, data, last=bool(control & 2)):
                    return
            elif not self._dataset_fragment(data, last=bool(control & 2)):
                return

    def _command_fragment(self, context_id: int, data: bytes | memoryview, last: bool) -> bool:
        self._command += memoryview(data)[1:]
        if len(self._command) > _MAX_COMMAND_SET:
            return self._abort("command_set_too_large")
        if not last:
            return True
        try:
            command_set = decode(BytesIO(bytes(self._command)), True, True)
            message = _MESSAGE_TYPES[int(command_set.CommandField)][1]()
        except Exception:
            return self._abort("undecodable_command_set")
        self._command = bytearray()
        message.command_set = command_set
        message.context_id = context_id
        if command_set.CommandDataSetType == 0x0101:
            message.data_set = BytesIO()
            self._deliver(message)
            return True
        self._pending = message
        if isinstance(message, C_STORE_RQ):
            context = self.assoc._accepted_cx.get(context_id)
            if context is None:
                return self._abort("unknown_presentation_context")
            try:
                incoming = self._spool.incoming(
                    self._limit,
                    str(command_set.AffectedSOPClassUID),
                    str(command_set.AffectedSOPInstanceUID),
                    str(context.transfer_syntax[0]),
                )
            except (ValueError, AttributeError, TypeError):
                return self._abort("invalid_command_set")
            except OSError as error:
                log.error("store_out_of_resources", error=type(error).__name__)
                return self._abort("spool_unwritable")
            with self._lock:
                self._incoming = incoming
        return True

    def _dataset_fragment(self, data: bytes | memoryview, last: bool) -> bool:
        message = self._pending
        if message is None:
            return self._abort("data_set_without_command")
        chunk = memoryview(data)[1:]
        incoming = self._incoming
        if incoming is not None:
            try:
                within = incoming.write(chunk)
            except OSError as error:
                log.error("store_out_of_resources", error=type(error).__name__)
                return self._abort("spool_unwritable")
            if not within:
                return self._abort("instance_too_large")
        else:
            self._other += chunk
            if len(self._other) > _MAX_OTHER_DATASET:
                return self._abort("data_set_too_large")
        if not last:
            return True
        self._pending = None
        if incoming is not None:
            try:
                incoming.complete()
            except OSError as error:
                log.error("store_out_of_resources", error=type(error).__name__)
                return self._abort("spool_unwritable")
            with self._lock:
                self._incoming = None
            message.data_set = BytesIO()
            self._deliver(message, incoming)
        else:
            message.data_set = BytesIO(bytes(self._other))
            self._other = bytearray()
            self._deliver(message)
        return True

    def _deliver(self, message: DIMSEMessage, incoming: IncomingFile | None = None) -> None:
        # No EVT_DIMSE_RECV: its only handler is pynetdicom's debug dump of every message.
        primitive = message.message_to_primitive()
        # The store handler reads the spooled file instead of `primitive.DataSet`.
        primitive._intake_incoming = incoming  # type: ignore[union-attr]
        context_id = cast(int, message.context_id)
        if isinstance(primitive, C_CANCEL):
            if len(self.cancel_req) < 10:
                self.cancel_req[cast(int, primitive.MessageIDBeingRespondedTo)] = primitive
            return
        if incoming is not None and isinstance(primitive, C_STORE):
            self._serve_store(primitive, context_id, incoming)
            return
        self.msg_queue.put((context_id, primitive))

    def _serve_store(self, request: C_STORE, context_id: int, incoming: IncomingFile) -> None:
        """Run the C-STORE service here, on the DUL thread that received the data set.

        Queued, the request goes to the association's reactor thread and its response comes
        back to this thread to be sent: two thread hand-offs per instance, each a wait for a
        CPU on a loaded machine. Served here, the response is queued on this thread's own loop
        and leaves on its next turn, while no PDU can arrive meanwhile (the sender waits for
        it, no asynchronous operations being negotiated). The store handler never waits for
        this thread, so it cannot deadlock.
        """
        if self.assoc._sent_release:
            incoming.discard()  # as pynetdicom does, a request during our release is ignored
            return
        context = self.assoc._accepted_cx[context_id]  # checked when its command arrived
        StorageServiceClass(self.assoc).SCP(request, context)

    def _abort(self, reason: str) -> bool:
        """Refuse the message in flight: drop its file and abort the association (A-ABORT)."""
        sender = getattr(self.assoc.acse, "sender", None)
        log.warning("store_refused", reason=reason, name=sender)
        self._refused = True
        self.discard_partial()
        # Evt19 is pynetdicom's "invalid PDU" event: it sends A-ABORT and closes.
        self.dul.event_queue.put("Evt19")
        return False

    def discard_partial(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.discard()


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _command_uid(uid: Any) -> bytes | None:
    text = str(uid) if uid is not None else ""
    if not text or len(text) > 64 or not text.isascii():
        return None
    data = text.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def store_response_command(primitive: Any) -> bytes | None:
    """The C-STORE-RSP command set (implicit VR LE, PS3.7 9.3.1.2), or None to let pynetdicom
    encode anything less plain (a warning's offending elements, an error comment)."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    sop_class = _command_uid(primitive.AffectedSOPClassUID)
    sop_instance = _command_uid(primitive.AffectedSOPInstanceUID)
    if sop_class is None or sop_instance is None or primitive.Status is None:
        return None
    body = b"".join(
        (
            _command_element(0x0002, sop_class),
            _command_element(0x0100, struct.pack("<H", 0x8001)),  # C-STORE-RSP
            _command_element(0x0120, struct.pack("<H", int(primitive.MessageIDBeingRespondedTo))),
            _command_element(0x0800, struct.pack("<H", 0x0101)),  # no data set
            _command_element(0x0900, struct.pack("<H", int(primitive.Status))),
            _command_element(0x1000, sop_instance),
        )
    )
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def start_intake_server(
    ae: Any,
    address: tuple[str, int],
    handlers: list[Any],
    configure: Callable[[IntakeServer], None],
) -> IntakeServer:
    """Start the server on its own thread, as `AE.start_server(block=False)` does."""
    server = cast(
        IntakeServer,
        ae.make_server(
            address,
            evt_handlers=handlers,
            server_class=IntakeServer,
            request_handler=IntakeRequestHandler,
        ),
    )
    server.admission_lock = threading.Lock()
    configure(server)
    thread = threading.Thread(
        target=make_target(server.serve_forever), name="IntakeAcceptor", daemon=True
    )
    thread.start()
    ae._servers.append(server)
    return server
