"""`edge-forwarder run` as a process: C-STORE in, S3 out, results back to PACS and EHR."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from edge_forwarder.transport.journal import Journal
from edge_forwarder.transport.uploader import verify_stored
from imaging_ai.aws import client
from imaging_ai.contracts import manifest_key
from imaging_ai.local.moto_server import free_port
from imaging_ai.synthetic import write_ct_study
from tests.integration.transport.conftest import BUCKET, SITE, CloudSide, Ehr, Pacs, write_config

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "edge_forwarder.cli"]
QUIET = "quiet_seconds_study = 1\nquiet_seconds_series = 0.5"  # complete a second after


def _wait(predicate, timeout_s: float = 25.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_run_forwards_and_delivers(tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr) -> None:
    # Given a configured forwarder process with its intake on a loopback port
    scp_port, metrics_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        cloud,
        pacs.port,
        ehr.url,
        extra=QUIET,
        scp_port=scp_port,
        metrics_port=metrics_port,
    )
    study = write_ct_study(
        tmp_path / "ct", seed=5, shape=(24, 128, 128), spacing_mm=(2.5, 2.5, 2.5), nodule_count=1
    )
    log = (tmp_path / "forwarder.log").open("wb")
    process = subprocess.Popen(
        [*CLI, "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    try:
        _wait(lambda: _answers(f"http://127.0.0.1:{metrics_port}/healthz"))
        # When a modality sends the study with `edge-forwarder send`
        sent = subprocess.run(
            [
                *CLI,
                "send",
                str(study.paths[0].parent),
                "--port",
                str(scp_port),
                "--ae-title",
                "EDGE_FWD",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr[-500:]
        journal = Journal(tmp_path / "state" / "forwarder.sqlite")
        _wait(lambda: any(r.stage == "uploaded" for r in journal.runs()))
        (run,) = journal.runs()
        # ... and the cloud answers
        cloud.answer(cloud.read_manifest(run.pseudo_study_uid), study)
        _wait(lambda: (journal.run(run.run_id) or run).stage == "delivered")

        # Then PACS and EHR have the results, and status prints the timeline
        assert len(pacs.received()) == 2 and len(ehr.received) == 1
        status = subprocess.run(
            [*CLI, "status", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        for stage in ("deidentified", "uploaded", "delivered_pacs", "delivered_ehr"):
            assert stage in status.stdout
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "edge_forwarder_uploaded_bytes_total" in metrics
        assert (
            requests.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5).status_code == 200
        )
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        log.close()
    assert code == 0
    # ... and the JSON log names each stage and carries no PHI
    lines = [
        json.loads(line)
        for line in (tmp_path / "forwarder.log").read_text().splitlines()
        if line.startswith("{")
    ]
    events = {line["event"] for line in lines}
    for event in (
        "received",
        "complete",
        "deidentified",
        "uploaded",
        "results_received",
        "delivered_pacs",
        "delivered_ehr",
    ):
        assert event in events
    raw = (tmp_path / "forwarder.log").read_text()
    for value in [*study.patient.phi_values(), study.study_instance_uid]:
        assert value not in raw


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_kill_9_of_the_forwarder_mid_upload_resumes_with_nothing_lost_or_doubled(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr
) -> None:
    # Given `edge-forwarder run` with a slow WAN link (so the upload takes several seconds)
    scp_port = free_port()
    slow_wan = "bandwidth_limit_mbps = 8"
    config = write_config(
        tmp_path, cloud, pacs.port, ehr.url, extra=QUIET, upload=slow_wan, scp_port=scp_port
    )
    study = write_ct_study(tmp_path / "ct", seed=9, shape=(48, 256, 256), nodule_count=1)
    journal = Journal(tmp_path / "state" / "forwarder.sqlite")

    def start(log_name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log_name).open("wb") as log:
            return subprocess.Popen(
                [*CLI, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
            )

    first = start("first.log")
    try:
        _wait(lambda: _listening(scp_port))
        sent = subprocess.run(
            [*CLI, "send", str(study.paths[0].parent), "--port", str(scp_port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr[-500:]
        # When the process is killed with SIGKILL while the series object is going up
        _wait(lambda: any(r.stage == "uploading" for r in journal.runs()), timeout_s=40)
        time.sleep(1.0)
        first.kill()
        first.wait(10)
        assert not any(r.stage == "uploaded" for r in journal.runs())
    finally:
        if first.poll() is None:
            first.kill()
    # ... and started again on the same state
    second = start("second.log")
    try:
        _wait(lambda: any(r.stage == "uploaded" for r in journal.runs()), timeout_s=60)
        (run,) = journal.runs()
        # Then the upload finished under the contract's keys only, with nothing half-done
        s3 = client("s3")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
        manifest = cloud.read_manifest(run.pseudo_study_uid)
        expected = sorted(
            [*(s.object_key for s in manifest.series), manifest_key(SITE, run.pseudo_study_uid)]
        )
        assert keys == expected
        assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
        # ... every stored object is the one the manifest describes, and no instance is lost
        for series in manifest.series:
            verify_stored(s3, BUCKET, series.object_key, series.sha256)
        assert len(cloud.read_series(manifest)) == len(study.paths)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
