"""MLLP client to the hospital's HL7 v2 interface engine: send one message, read its ACK.

Original-mode acknowledgement (HL7 v2.5.1 chapter 2.9.2): AA accepted; AE an error in the
message content (sending it again will not help: dead letter); AR rejected for a reason that
is not the content (receiver down, busy, internal error: retry with backoff). A dropped
connection, a timeout or an ACK for another message are transient too.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from enum import StrEnum

from edge_forwarder.transport.errors import PermanentError, TransientError

# MLLP framing (HL7 v2 transport, Appendix C): <VT> message <FS><CR>.
START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 1 << 20


class AckCode(StrEnum):
    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class Hl7Rejected(PermanentError):
    """The receiver answered AE: the message content is wrong for it (kept as a dead letter)."""

    def __init__(self, message: str, ack: str) -> None:
        super().__init__(message)
        self.ack = ack  # on-prem only: may quote the message


@dataclass(frozen=True)
class Acknowledgement:
    code: AckCode
    control_id: str  # MSA-2: the MSH-10 of the message it answers
    text: str  # MSA-3, the receiver's reason (may be empty)


def frame(message: str) -> bytes:
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


def parse_ack(raw: bytes) -> Acknowledgement:
    """The MSA of an MLLP-framed (or bare) ACK; TransientError when there is none."""
    text = raw.strip(b"\x0b\x1c\r\n").decode("utf-8", "replace")
    for line in text.replace("\n", "\r").split("\r"):
        if line.startswith("MSA"):
            fields = line.split(line[3:4] or "|")
            code = fields[1] if len(fields) > 1 else ""
            if code in ("CA", "CE", "CR"):  # enhanced-mode commit codes read the same way
                code = "A" + code[1]
            try:
                ack_code = AckCode(code)
            except ValueError:
                raise TransientError("HL7 ACK has an unknown MSA-1 code") from None
            control = fields[2] if len(fields) > 2 else ""
            reason = fields[3] if len(fields) > 3 else ""
            return Acknowledgement(ack_code, control, reason)
    raise TransientError("HL7 answer has no MSA segment")


@dataclass(frozen=True)
class MllpPeer:
    host: str
    port: int
    timeout_s: float = 30.0

    def send(self, message: str, control_id: str) -> Acknowledgement:
        """Send one message and return its AA; raise for AE (permanent) and the rest."""
        ack = parse_ack(self._exchange(frame(message)))
        if ack.control_id != control_id:
            raise TransientError("HL7 ACK answers another message (MSA-2 mismatch)")
        if ack.code is AckCode.ERROR:
            raise Hl7Rejected("HL7 receiver answered AE (application error)", ack.text)
        if ack.code is AckCode.REJECT:
            raise TransientError("HL7 receiver answered AR (application reject)")
        return ack

    def _exchange(self, payload: bytes) -> bytes:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as conn:
                # One small request, one small answer: Nagle would add a delayed-ACK wait.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.sendall(payload)
                answer = b""
                while END_BLOCK not in answer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise TransientError("HL7 receiver closed the connection without an ACK")
                    answer += chunk
                    if len(answer) > MAX_ACK_BYTES:
                        raise TransientError("HL7 ACK is larger than any ACK should be")
        except TimeoutError:
            raise TransientError("HL7 receiver did not answer in time") from None
        except OSError as error:
            raise TransientError(f"HL7 receiver unreachable: {type(error).__name__}") from None
        return answer[: answer.index(END_BLOCK)]
