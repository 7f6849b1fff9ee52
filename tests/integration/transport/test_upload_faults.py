"""Upload faults with a real moto server: S3 outage mid-upload, kill -9 mid-upload, resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_forwarder.transport.backoff import Backoff
from edge_forwarder.transport.journal import Journal
from edge_forwarder.transport.uploader import SeriesTar, Uploader, UploadSettings, s3_client
from imaging_ai import envelope
from imaging_ai.aws import reset_clients
from imaging_ai.contracts import DeidRecord, ManifestInstance, ModelRun, manifest_key
from imaging_ai.local.moto_server import MotoServer, free_port, start_moto_server

pytestmark = pytest.mark.integration

SITE, BUCKET, STUDY, SERIES = "site-a", "imaging-ai-data", "2.25.111", "2.25.222"
MIB = 1024 * 1024


@pytest.fixture
def own_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A moto server of this test's own, so the test may stop and restart it."""
    server = start_moto_server(free_port())
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    reset_clients()
    envelope.reset_providers()
    yield server
    server.stop()
    reset_clients()
    envelope.reset_providers()


def _settings(key_arn: str, limit_bytes_s: float = 0.0) -> UploadSettings:
    return UploadSettings(
        bucket=BUCKET,
        kms_key_arn=key_arn,
        site=SITE,
        forwarder_version="test",
        part_size=5 * MIB,
        parallel_parts=2,
        bandwidth_limit_bytes_s=limit_bytes_s,
        backoff=Backoff(0.05, 0.5),
    )


def _prepared_run(tmp: Path, key_arn: str, size: int = 22 * MIB) -> tuple[Journal, str]:
    """A run whose series (incompressible bytes) and manifest are encrypted in the spool."""
    journal = Journal(tmp / "journal.sqlite")
    spool = tmp / "outbox" / "r1"
    spool.mkdir(parents=True)
    tar = spool / f"{SERIES}.tar"
    tar.write_bytes(os.urandom(size))
    journal.open_run("r1-test", "key-1", 1, STUDY)
    Uploader(_settings(key_arn), journal, client=object()).prepare(
        "r1-test",
        STUDY,
        [
            SeriesTar(
                SERIES,
                "CT",
                tar,
                [
                    ManifestInstance(
                        sop_instance_uid="2.25.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2"
                    )
                ],
            )
        ],
        DeidRecord(table_edition="2026d", options=[], method_codes=["113100"]),
        [ModelRun(run_id="r1-test", model_name="lung-nodule-ct")],
    )
    return journal, "r1-test"


def _setup_aws() -> str:
    client = s3_client()
    client.create_bucket(Bucket=BUCKET)
    import boto3

    return str(boto3.client("kms").create_key()["KeyMetadata"]["Arn"])


def _assert_stored_exactly(journal: Journal, run_id: str) -> None:
    client = s3_client()
    rows = journal.objects(run_id)
    listed = {o["Key"]: o for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    # Nothing under another key, nothing twice, nothing half-done left behind.
    assert set(listed) == {r.object_key for r in rows}
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    for row in rows:
        body = client.get_object(Bucket=BUCKET, Key=row.object_key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == row.sha256
        assert len(body) == row.size_bytes
    assert manifest_key(SITE, STUDY) in listed


def _wait_for(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_s3_outage_mid_upload_backs_off_and_drains(tmp_path: Path, own_moto: MotoServer) -> None:
    # Given a prepared 22 MiB series (5 parts) uploading at ~8 MiB/s
    key_arn = _setup_aws()
    journal, run_id = _prepared_run(tmp_path, key_arn)
    retries: list[float] = []
    uploader = Uploader(
        _settings(key_arn, 8 * MIB),
        journal,
        on_retry=lambda attempt, error, wait: retries.append(wait),
    )
    worker = threading.Thread(target=uploader.upload, args=(run_id,))
    worker.start()
    series = next(r for r in journal.objects(run_id) if r.kind == "series")
    _wait_for(
        lambda: (
            len(journal.objects(run_id)[0].parts) >= 1
            or any(len(r.parts) >= 1 for r in journal.objects(run_id))
        )
    )

    # When S3 goes away mid-upload and comes back on the same port (state lost, as moto does;
    # the operator's bucket is restored)
    port = int(own_moto.endpoint_url.rsplit(":", 1)[1])
    own_moto.stop()
    time.sleep(1.5)
    restarted = start_moto_server(port)
    try:
        s3_client().create_bucket(Bucket=BUCKET)
        worker.join(60)

        # Then the upload backed off with jitter, resumed and the backlog drained exactly once
        assert not worker.is_alive()
        assert retries, "the outage was not retried"
        assert len(set(retries)) == len(retries), "retry waits should be jittered"
        assert all(r.state == "DONE" for r in journal.objects(run_id))
        assert series.object_key in {r.object_key for r in journal.objects(run_id)}
        _assert_stored_exactly(journal, run_id)
    finally:
        restarted.stop()


_CHILD = """
import json, sys
from pathlib import Path
from edge_forwarder.transport.backoff import Backoff
from edge_forwarder.transport.journal import Journal
from edge_forwarder.transport.uploader import Uploader, UploadSettings
a = json.loads(sys.argv[1])
settings = UploadSettings(bucket=a["bucket"], kms_key_arn=a["key"], site="site-a",
    forwarder_version="t", part_size=5 * 2**20, parallel_parts=1,
    bandwidth_limit_bytes_s=a["rate"], backoff=Backoff(0.05, 0.5))
Uploader(settings, Journal(Path(a["journal"]))).upload("r1-test")
"""


def killed_mid_upload(tmp_path: Path, bucket: str, key_arn: str) -> tuple[Journal, str, int]:
    """A prepared 22 MiB run uploaded by another process at ~5 MiB/s, SIGKILLed once two parts
    are journaled: its journal, run id, and the parts journaled by the kill."""
    journal, run_id = _prepared_run(tmp_path, key_arn)
    args = {
        "bucket": bucket,
        "key": key_arn,
        "rate": 5 * MIB,
        "journal": str(tmp_path / "journal.sqlite"),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(args)], env=os.environ.copy()
    )
    try:
        _wait_for(lambda: sum(len(r.parts) for r in journal.objects(run_id)) >= 2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    return journal, run_id, sum(len(r.parts) for r in journal.objects(run_id))


def test_kill_9_mid_upload_resumes_from_journaled_parts(
    tmp_path: Path, own_moto: MotoServer
) -> None:
    # Given a prepared 22 MiB series being uploaded by another process at ~5 MiB/s
    # When the uploader is killed with SIGKILL mid-object
    key_arn = _setup_aws()
    journal, run_id, parts_before = killed_mid_upload(tmp_path, BUCKET, key_arn)
    assert parts_before < 5, "the upload finished before the kill; slow it down"

    # Then a fresh uploader resumes the same multipart upload and sends only what is missing
    sent: list[int] = []
    Uploader(_settings(key_arn), journal, on_bytes=sent.append).upload(run_id)
    series = next(r for r in journal.objects(run_id) if r.kind == "series")
    assert sum(sent) < series.size_bytes + 1 * MIB  # not the whole object again
    assert len(sent) <= 5 - parts_before + 1 + 1  # missing parts (+ maybe one in flight) + manifest
    _assert_stored_exactly(journal, run_id)
