"""KMS envelope encryption of study objects (AWS Encryption SDK), context checked on decrypt."""

from __future__ import annotations

import io
from functools import cache
from typing import IO

import aws_encryption_sdk
import botocore.session
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy

from imaging_ai.errors import IntegrityError

# 1 MiB frames run ~2.5x faster than the 4 KiB default here; committing without signing is
# enough because producer and consumer share one KMS key policy (no untrusted writers).
FRAME_LENGTH = 1024 * 1024
ALGORITHM = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY


@cache
def _sdk() -> aws_encryption_sdk.EncryptionSDKClient:
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )


@cache
def _provider(key_arn: str) -> aws_encryption_sdk.StrictAwsKmsMasterKeyProvider:
    # A fresh botocore session reads AWS_ENDPOINT_URL, so the same code runs against moto.
    return aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[key_arn], botocore_session=botocore.session.Session()
    )


def reset_providers() -> None:
    _provider.cache_clear()


def encrypt_stream(
    source: IO[bytes], sink: IO[bytes], key_arn: str, context: dict[str, str]
) -> None:
    """Encrypt `source` into `sink` frame by frame (memory stays near one frame)."""
    with _sdk().stream(
        mode="e",
        source=source,
        key_provider=_provider(key_arn),
        encryption_context=context,
        frame_length=FRAME_LENGTH,
        algorithm=ALGORITHM,
    ) as encryptor:
        # Frame-sized reads: iterating the stream reads 8 KiB lines and re-slices its buffer
        # for each, which halves the throughput.
        while chunk := encryptor.read(FRAME_LENGTH):
            sink.write(chunk)


def encrypt_bytes(plaintext: bytes, key_arn: str, context: dict[str, str]) -> bytes:
    sink = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), sink, key_arn, context)
    return sink.getvalue()


def decrypt_bytes(ciphertext: bytes, key_arn: str, expected_context: dict[str, str]) -> bytes:
    """Decrypt and refuse an object whose encryption context is not the expected one."""
    plaintext, header = _sdk().decrypt(source=ciphertext, key_provider=_provider(key_arn))
    for name, value in expected_context.items():
        if header.encryption_context.get(name) != value:
            raise IntegrityError(f"encryption context field {name!r} does not match")
    return bytes(plaintext)
