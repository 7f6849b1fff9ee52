"""Envelope encryption against a moto KMS key on the loopback server."""

from __future__ import annotations

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
