"""AWS adapters the services depend on: encrypted study objects in S3 and the site queues."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from botocore.exceptions import ClientError

from functions.common.keys import split_s3_uri
from functions.common.observability import record_run_ended
from imaging_ai import envelope
from imaging_ai.contracts import SiteMessageKind, SiteResultMessage, encryption_context
from imaging_ai.errors import ContractError, IntegrityError
from imaging_ai.state import RunKey, RunStateStore


class ObjectMissing(ContractError):
    """An object the contract promises is not in the bucket."""


class StudyObjectStore:
    """The data bucket: envelope-encrypted study objects (context checked) and plain objects."""

    def __init__(self, s3: Any, bucket: str, kms_key_arn: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self._key_arn = kms_key_arn

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def read(self, key: str, bucket: str | None = None) -> bytes:
        return bytes(self._get(key, bucket)["Body"].read())

    def _get(self, key: str, bucket: str | None = None) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self._s3.get_object(Bucket=bucket or self.bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404", "NoSuchBucket"):
                raise ObjectMissing("an expected object is missing from the bucket") from None
            raise
        return response

    @contextmanager
    def open_encrypted(
        self,
        key: str,
        site: str,
        pseudo_study_uid: str,
        sha256: str | None = None,
        size_bytes: int | None = None,
    ) -> Iterator[IO[bytes]]:
        """Stream an object's plaintext: S3 body → decrypt (context checked first) → reader.

        Nothing holds the whole object. On a clean exit every byte has been read, the last
        frame authenticated, and the ciphertext checked against the manifest's size and
        SHA-256; the caller must not act on what it parsed before the block has ended.
        """
        response = self._get(key)
        body = response["Body"]
        try:
            if size_bytes is not None and int(response.get("ContentLength", -1)) != size_bytes:
                raise IntegrityError("object size does not match the manifest")
            ciphertext = _HashingReader(body)
            context = encryption_context(site, pseudo_study_uid)
            with envelope.decrypting_reader(ciphertext, self._key_arn, context) as plaintext:
                yield plaintext
            ciphertext.read_to_end()  # bytes after the message would change the SHA-256
        finally:
            body.close()
        if size_bytes is not None and ciphertext.size != size_bytes:
            raise IntegrityError("object size does not match the manifest")
        if sha256 is not None and ciphertext.hexdigest() != sha256:
            raise IntegrityError("object SHA-256 does not match the manifest")

    def read_uri(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        return self.read(key, bucket=bucket)

    def read_encrypted(
        self,
        key: str,
        site: str,
        pseudo_study_uid: str,
        sha256: str | None = None,
        size_bytes: int | None = None,
    ) -> bytes:
        """Fetch, check size and SHA-256 of the stored ciphertext when given, then decrypt."""
        ciphertext = self.read(key)
        if size_bytes is not None and len(ciphertext) != size_bytes:
            raise IntegrityError("object size does not match the manifest")
        if sha256 is not None and hashlib.sha256(ciphertext).hexdigest() != sha256:
            raise IntegrityError("object SHA-256 does not match the manifest")
        try:
            return envelope.decrypt_bytes(
                ciphertext, self._key_arn, encryption_context(site, pseudo_study_uid)
            )
        except IntegrityError:
            raise
        except Exception as error:
            # The Encryption SDK raises its own errors for tampered or foreign ciphertext.
            if type(error).__module__.startswith("aws_encryption_sdk"):
                raise IntegrityError("object cannot be decrypted with this study's key") from None
            raise

    def write_encrypted(self, key: str, plaintext: bytes, site: str, pseudo_study_uid: str) -> None:
        ciphertext = envelope.encrypt_bytes(
            plaintext, self._key_arn, encryption_context(site, pseudo_study_uid)
        )
        self.write(key, ciphertext, "application/octet-stream")

    def write(self, key: str, body: bytes, content_type: str) -> None:
        self._s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=self._key_arn,
        )


class _HashingReader(io.RawIOBase):
    """A readable view of an S3 body that hashes and counts what passes through it."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self._sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._body.read(len(buffer))
        self._sha256.update(chunk)
        self.size += len(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def read_to_end(self) -> None:
        while self.read(1024 * 1024):
            pass

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


class SiteNotifier:
    """Sends `SiteResultMessage`s to each site's results queue."""

    def __init__(self, sqs: Any, queues: dict[str, str]) -> None:
        self._sqs = sqs
        self._queues = queues

    def send(self, message: SiteResultMessage) -> None:
        queue_url = self._queues.get(message.site)
        if queue_url is None:
            raise ContractError("no results queue is configured for this site")
        self._sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=message.model_dump_json(),
            MessageAttributes={"kind": {"DataType": "String", "StringValue": message.kind}},
        )

    def fail_run(
        self, state: RunStateStore, run: RunKey, reason: str, model_name: str | None = None
    ) -> bool:
        """Record FAILED with its reason and tell the site, once: a redelivery records nothing.

        Returns whether this call recorded it (False: the run had already ended).
        """
        if not state.fail(run, reason, model_name):
            return False
        self._tell(SiteMessageKind.FAILED, run, reason, model_name)
        return True

    def not_analyze_run(
        self, state: RunStateStore, run: RunKey, reason: str, model_name: str | None = None
    ) -> bool:
        """Record NOT_ANALYZED with its reason and tell the site, once (see `fail_run`)."""
        if not state.not_analyze(run, reason):
            return False
        self._tell(SiteMessageKind.NOT_ANALYZED, run, reason, model_name)
        return True

    def _tell(
        self, kind: SiteMessageKind, run: RunKey, reason: str, model_name: str | None
    ) -> None:
        record_run_ended(run.site, model_name, kind.value.lower(), reason)
        self.send(
            SiteResultMessage(
                kind=kind,
                site=run.site,
                pseudo_study_uid=run.pseudo_study_uid,
                run_id=run.run_id,
                reason=reason,
                model_name=model_name,
            )
        )
