"""Encrypt series tars and the manifest; upload them resumably, parts journaled, manifest last."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from edge_forwarder.transport.backoff import Backoff, retry
from edge_forwarder.transport.errors import PermanentError, TransientError
from edge_forwarder.transport.journal import Journal, ObjectRow
from edge_forwarder.transport.packaging import seal
from imaging_ai import envelope
from imaging_ai.contracts import (
    DeidRecord,
    Manifest,
    ManifestInstance,
    ManifestSeries,
    ModelRun,
    Priority,
    encryption_context,
    manifest_key,
    series_key,
)

# botocore gives up quickly so that our own journaled, logged backoff handles outages.
_S3_CONFIG = Config(
    retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=60
)
_RETRYABLE_CODES = {
    "RequestTimeout",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeTooSkewed",
    "ExpiredToken",
    "NoSuchBucket",  # a bucket briefly missing after a restore: wait for it rather than fail
}


class _UploadGone(Exception):
    """S3 no longer knows a multipart upload (expired, aborted, or a restored store)."""


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def s3_client(region: str | None = None) -> Any:
    """An S3 client honouring AWS_ENDPOINT_URL and the standard credential chain."""
    return boto3.session.Session().client("s3", region_name=region, config=_S3_CONFIG)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TransientError | BotoCoreError):
        return True
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _RETRYABLE_CODES or status >= 500
    return isinstance(error, OSError)


@dataclass(frozen=True)
class SeriesTar:
    """A de-identified series packed as a plaintext tar in the spool, ready to encrypt."""

    pseudo_series_uid: str
    modality: str
    tar_path: Path
    instances: list[ManifestInstance]


@dataclass
class UploadSettings:
    bucket: str
    kms_key_arn: str
    site: str
    forwarder_version: str
    part_size: int = 8 * 1024 * 1024
    parallel_parts: int = 4
    bandwidth_limit_bytes_s: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)


class _Throttle:
    """A shared token bucket: parallel parts together stay under the configured bandwidth."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = bytes_per_s
        self._next_free = time.monotonic()
        self._lock = threading.Lock()

    def take(self, size: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            start = max(self._next_free, time.monotonic())
            self._next_free = start + size / self.rate
        time.sleep(max(0.0, start - time.monotonic()))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Uploader:
    """Stage 1 `prepare` encrypts into the spool and journals; stage 2 `upload` drains it.

    The split keeps every KMS call before the network-heavy part: after an outage or a
    kill -9, only the S3 transfer resumes, from the parts the journal and S3 agree on.
    """

    def __init__(
        self,
        settings: UploadSettings,
        journal: Journal,
        client: Any | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.client = client or s3_client()
        self.on_bytes = on_bytes
        self.on_retry = on_retry
        self._throttle = _Throttle(settings.bandwidth_limit_bytes_s)

    # ---- stage 1: encrypt into the spool --------------------------------------------------

    def prepare(
        self,
        run_id: str,
        pseudo_study_uid: str,
        series: list[SeriesTar],
        deidentification: DeidRecord,
        runs: list[ModelRun],
        priority: Priority = Priority.ROUTINE,
    ) -> Manifest:
        """Encrypt every series tar and the manifest, journal them under `run_id`; plaintext
        tars are removed. The manifest names `runs`: one per model the study goes to."""
        s = self.settings
        context = encryption_context(s.site, pseudo_study_uid)
        entries: list[ManifestSeries] = []
        for item in series:
            encrypted = item.tar_path.with_suffix(".tar.enc")
            digest, size = seal(item.tar_path, encrypted, s.kms_key_arn, context)
            item.tar_path.unlink()
            key = series_key(s.site, pseudo_study_uid, item.pseudo_series_uid)
            entries.append(
                ManifestSeries(
                    pseudo_series_uid=item.pseudo_series_uid,
                    modality=item.modality,
                    object_key=key,
                    sha256=digest,
                    size_bytes=size,
                    instances=item.instances,
                )
            )
            self.journal.add_object(key, run_id, "series", encrypted, digest, size)
        manifest = Manifest(
            site=s.site,
            pseudo_study_uid=pseudo_study_uid,
            runs=runs,
            series=entries,
            deidentification=deidentification,
            forwarder_version=s.forwarder_version,
            priority=priority,
        )
        spool = series[0].tar_path.parent if series else Path(".")
        manifest_path = spool / "manifest.json.enc"
        manifest_path.write_bytes(
            envelope.encrypt_bytes(manifest.model_dump_json().encode(), s.kms_key_arn, context)
        )
        self.journal.add_object(
            manifest_key(s.site, pseudo_study_uid, priority),
            run_id,
            "manifest",
            manifest_path,
            _sha256_file(manifest_path),
            manifest_path.stat().st_size,
        )
        return manifest

    # ---- stage 2: upload ------------------------------------------------------------------

    def upload(self, run_id: str, stop: threading.Event | None = None) -> int:
        """Upload the run's pending objects, series first and the manifest last; bytes sent."""
        rows = self.journal.objects(run_id)
        sent = 0
        for row in sorted(rows, key=lambda r: r.kind == "manifest"):
            if row.state == "DONE":
                continue
            if row.kind == "manifest" and any(
                r.state != "DONE" for r in self.journal.objects(run_id) if r.kind == "series"
            ):
                raise TransientError("manifest held back: a series object is not uploaded")
            sent += self._upload_object(row, stop)
            self.journal.object_done(row.object_key)
        return sent

    def _call(self, action: Callable[[], Any], stop: threading.Event | None) -> Any:
        return retry(
            action,
            should_retry=is_transient,
            backoff=self.settings.backoff,
            max_attempts=None,  # an outage is waited out; `stop` ends the wait on shutdown
            on_retry=self.on_retry,
            stop=stop,
        )

    def _already_stored(self, row: ObjectRow, stop: threading.Event | None) -> bool:
        """True when S3 already holds this exact object (a completion whose journal write died)."""

        def head() -> dict[str, Any] | None:
            try:
                return dict(
                    self.client.head_object(Bucket=self.settings.bucket, Key=row.object_key)
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    return None
                raise

        found = self._call(head, stop)
        return bool(found and found.get("Metadata", {}).get("sha256") == row.sha256)

    def _upload_object(self, row: ObjectRow, stop: threading.Event | None) -> int:
        s = self.settings
        common: dict[str, Any] = {
            "Bucket": s.bucket,
            "Key": row.object_key,
        }
        extra: dict[str, Any] = {
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": s.kms_key_arn,
            "Metadata": {"sha256": row.sha256},
        }
        path = Path(row.spool_path)
        if row.upload_id is None and self._already_stored(row, stop):
            return 0
        if row.size_bytes <= s.part_size and row.upload_id is None:
            body = path.read_bytes()
            self._throttle.take(len(body))
            checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
            self._call(
                lambda: self.client.put_object(
                    **common, **extra, Body=body, ChecksumSHA256=checksum
                ),
                stop,
            )
            self._bytes(len(body))
            return len(body)
        return self._multipart(row, path, common, extra, stop)

    def _multipart(
        self,
        row: ObjectRow,
        path: Path,
        common: dict[str, Any],
        extra: dict[str, Any],
        stop: threading.Event | None,
    ) -> int:
        s = self.settings
        upload_id = row.upload_id
        done: dict[int, dict[str, str]] = {}
        if upload_id is not None:
            reconciled = self._reconcile(row, upload_id, common, stop)
            if reconciled is None:
                upload_id = None
            else:
                done = reconciled
        if upload_id is None:
            if self._already_stored(row, stop):
                return 0
            created = self._call(
                lambda: self.client.create_multipart_upload(
                    **common, **extra, ChecksumAlgorithm="SHA256"
                ),
                stop,
            )
            upload_id = str(created["UploadId"])
            self.journal.set_upload_id(row.object_key, upload_id)
        part_count = max(1, -(-row.size_bytes // s.part_size))
        missing = [n for n in range(1, part_count + 1) if n not in done]
        sent = 0

        def send(number: int) -> int:
            with path.open("rb") as source:
                source.seek((number - 1) * s.part_size)
                body = source.read(s.part_size)
            checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
            self._throttle.take(len(body))
            answer = self._call(
                self._guarded(
                    lambda: self.client.upload_part(
                        **common,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                    ),
                    common,
                    upload_id,
                ),
                stop,
            )
            self.journal.record_part(row.object_key, number, str(answer["ETag"]), checksum)
            self._bytes(len(body))
            return len(body)

        try:
            with ThreadPoolExecutor(max_workers=s.parallel_parts) as pool:
                for size in pool.map(send, missing):
                    sent += size
            parts = self.journal.objects(row.run_id)
            recorded = next(r.parts for r in parts if r.object_key == row.object_key)
            self._call(
                self._guarded(
                    lambda: self.client.complete_multipart_upload(
                        **common,
                        UploadId=upload_id,
                        MultipartUpload={
                            "Parts": [
                                {
                                    "PartNumber": n,
                                    "ETag": p["etag"],
                                    "ChecksumSHA256": p["checksum"],
                                }
                                for n, p in sorted(recorded.items())
                            ]
                        },
                    ),
                    common,
                    upload_id,
                ),
                stop,
            )
        except _UploadGone:
            # Start this object over under the same key: the old upload cannot be completed.
            self.journal.set_upload_id(row.object_key, None)
            fresh = next(
                r for r in self.journal.objects(row.run_id) if r.object_key == row.object_key
            )
            return sent + self._multipart(fresh, path, common, extra, stop)
        return sent

    def _guarded(
        self, action: Callable[[], Any], common: dict[str, Any], upload_id: str
    ) -> Callable[[], Any]:
        """Turn "this multipart upload no longer exists" into _UploadGone (not retried).

        Real S3 answers NoSuchUpload; some stand-ins answer 500, so a 5xx is followed by a
        ListParts probe before it is treated as transient.
        """

        def guarded() -> Any:
            try:
                return action()
            except ClientError as error:
                if _code(error) == "NoSuchUpload":
                    raise _UploadGone from None
                if is_transient(error):
                    try:
                        self.client.list_parts(**common, UploadId=upload_id, MaxParts=1)
                    except ClientError as probe:
                        if _code(probe) in {"NoSuchUpload", "404"}:
                            raise _UploadGone from None
                raise

        return guarded

    def _reconcile(
        self,
        row: ObjectRow,
        upload_id: str,
        common: dict[str, Any],
        stop: threading.Event | None,
    ) -> dict[int, dict[str, str]] | None:
        """Parts S3 holds for a journaled upload, or None when S3 no longer knows the upload."""

        def list_parts() -> list[dict[str, Any]] | None:
            try:
                listed: list[dict[str, Any]] = []
                marker = 0
                while True:
                    page = self.client.list_parts(
                        **common, UploadId=upload_id, PartNumberMarker=marker
                    )
                    listed.extend(page.get("Parts", []))
                    if not page.get("IsTruncated"):
                        return listed
                    marker = int(page["NextPartNumberMarker"])
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in {"NoSuchUpload", "404"}:
                    return None
                raise

        listed = self._call(list_parts, stop)
        if listed is None:
            self.journal.set_upload_id(row.object_key, None)
            return None
        done: dict[int, dict[str, str]] = {}
        for part in listed:
            number = int(part["PartNumber"])
            journaled = row.parts.get(number)
            # Trust a part only if S3 and the journal agree on its checksum.
            if journaled and part.get("ChecksumSHA256") in (None, journaled["checksum"]):
                done[number] = journaled
        return done

    def _bytes(self, count: int) -> None:
        if self.on_bytes is not None:
            self.on_bytes(count)


def verify_stored(client: Any, bucket: str, key: str, sha256: str) -> None:
    """Raise PermanentError when a stored object's bytes do not hash to `sha256`."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    if hashlib.sha256(body).hexdigest() != sha256:
        raise PermanentError("stored object does not match its manifest checksum")
