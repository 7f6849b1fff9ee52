"""Envelope encryption against a moto KMS key on the loopback server."""

from __future__ import annotations

import io

import pytest

from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import encryption_context
from imaging_ai.errors import IntegrityError

STUDY = "2.25.1234"


@pytest.fixture
def key_arn(aws: object) -> str:
    return str(client("kms").create_key()["KeyMetadata"]["Arn"])


def test_round_trip_keeps_bytes(key_arn: str) -> None:
    # Given a 3 MiB object (several 1 MiB frames)
    plaintext = bytes(range(256)) * (3 * 4096 + 7)
    context = encryption_context("site-a", STUDY)
    # When it is encrypted and decrypted with the same context
    ciphertext = envelope.encrypt_bytes(plaintext, key_arn, context)
    # Then the bytes come back and the ciphertext does not contain them
    assert plaintext[:4096] not in ciphertext
    assert envelope.decrypt_bytes(ciphertext, key_arn, context) == plaintext


def test_decrypt_refuses_another_study(key_arn: str) -> None:
    ciphertext = envelope.encrypt_bytes(b"x" * 10, key_arn, encryption_context("site-a", STUDY))
    with pytest.raises(IntegrityError, match="pseudo_study_uid"):
        envelope.decrypt_bytes(ciphertext, key_arn, encryption_context("site-a", "2.25.99"))


class _CountingReads(io.RawIOBase):
    """A source that records the largest read it was asked for (the decryptor must stream)."""

    def __init__(self, payload: bytes) -> None:
        self._payload = io.BytesIO(payload)
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.largest_read = max(self.largest_read, len(buffer))
        chunk = self._payload.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_stream_decrypt_keeps_bytes_and_reads_frame_by_frame(key_arn: str) -> None:
    # Given a 5 MiB object encrypted in 1 MiB frames
    plaintext = bytes(range(256)) * (5 * 4096 + 3)
    context = encryption_context("site-a", STUDY)
    source = _CountingReads(envelope.encrypt_bytes(plaintext, key_arn, context))
    sink = io.BytesIO()

    # When it is stream-decrypted
    envelope.decrypt_stream(source, sink, key_arn, context)

    # Then every byte comes back, and the source was never read whole
    assert sink.getvalue() == plaintext
    assert source.largest_read <= 2 * envelope.FRAME_LENGTH


def test_stream_decrypt_checks_the_context_before_writing_anything(key_arn: str) -> None:
    # Given an object of one study
    ciphertext = envelope.encrypt_bytes(
        b"x" * 100_000, key_arn, encryption_context("site-a", STUDY)
    )
    sink = io.BytesIO()
    # When it is stream-decrypted as another study's object
    with pytest.raises(IntegrityError, match="pseudo_study_uid"):
        envelope.decrypt_stream(
            io.BytesIO(ciphertext), sink, key_arn, encryption_context("site-a", "2.25.99")
        )
    # Then not one plaintext byte was written out
    assert sink.getvalue() == b""


def test_stream_decrypt_refuses_a_tampered_frame(key_arn: str) -> None:
    context = encryption_context("site-a", STUDY)
    ciphertext = bytearray(envelope.encrypt_bytes(b"y" * (3 * 1024 * 1024), key_arn, context))
    ciphertext[-100] ^= 0x01  # inside the last frame
    with pytest.raises(IntegrityError, match="cannot be decrypted"):
        envelope.decrypt_stream(io.BytesIO(bytes(ciphertext)), io.BytesIO(), key_arn, context)
