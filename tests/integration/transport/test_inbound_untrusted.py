"""Results from the cloud are untrusted: bad ones are refused and recorded, and never block."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from edge_forwarder.cli import main
from edge_forwarder.composition import Forwarder
from edge_forwarder.observability import LOGGER_NAME, configure_logging
from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import encryption_context, result_key
from imaging_ai.edge_stage import EdgeStage
from tests.integration.transport.conftest import BUCKET, SITE, CloudSide, Ehr, Pacs
from tests.integration.transport.helpers import completed_study

pytestmark = pytest.mark.integration
FORGED_STUDY = "2.25.123456789012345678901234567890"


@pytest.fixture
def deployed_logging() -> Iterator[io.StringIO]:
    """Logging as `edge-forwarder run` sets it up, into a buffer that also gets whatever any
    other library logs at WARNING or above (what Python would print to stderr)."""
    names = ("", LOGGER_NAME, "aws_encryption_sdk", "pynetdicom", "pydicom", "highdicom")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    configure_logging("INFO")
    buffer = io.StringIO()
    logging.getLogger(LOGGER_NAME).handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    stderr = logging.StreamHandler(buffer)
    stderr.setLevel(logging.WARNING)
    logging.getLogger().addHandler(stderr)
    yield buffer
    for name, (handlers, level) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).setLevel(level)
    logging.getLogger(LOGGER_NAME).propagate = True


def _answered(tmp: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr) -> tuple[Forwarder, Any]:
    """A study uploaded, and its genuine results waiting on the queue."""
    edge = completed_study(tmp, cloud, pacs.port, ehr.url, seed=5)
    edge.forwarder.outbound.tick()
    (run,) = edge.forwarder.journal.runs()
    cloud.answer(cloud.read_manifest(run.pseudo_study_uid), edge.study)
    return edge.forwarder, run


def _send(cloud: CloudSide, body: str | dict[str, Any]) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    client("sqs").send_message(QueueUrl=cloud.queue_url, MessageBody=text)


def _queue_left(cloud: CloudSide) -> int:
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=cloud.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def _put_result(cloud: CloudSide, study_uid: str, run_id: str, name: str, data: bytes) -> str:
    key = result_key(SITE, study_uid, run_id, name)
    body = envelope.encrypt_bytes(data, cloud.key_arn, encryption_context(SITE, study_uid))
    client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)
    return key


def test_malformed_messages_are_recorded_and_never_touch_a_path(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given genuine results on the queue, behind messages crafted to escape or to confuse
    service, run = _answered(tmp_path, cloud, pacs, ehr)
    ready = {"kind": "RESULT_READY", "site": SITE, "pseudo_study_uid": run.pseudo_study_uid}
    escape = "../../../../escaped"
    crafted = [
        "{not json",
        {**ready, "run_id": escape, "result_keys": {"sr.dcm": f"results/{SITE}/x/sr.dcm.enc"}},
        # another site's results, under a key the message claims as ours
        {
            **ready,
            "run_id": "r1-x",
            "result_keys": {"sr.dcm": "results/site-b/1.2/r1-x/sr.dcm.enc"},
        },
        {**ready, "run_id": "r1-x", "result_keys": {"../evil": "results/site-a/1/r1-x/e.enc"}},
        {
            "kind": "FAILED",
            "site": SITE,
            "pseudo_study_uid": run.pseudo_study_uid,
            "run_id": run.run_id,
            "reason": "log\ninjection",
        },
        {**ready, "run_id": "r1-x", "result_keys": {}, "unexpected": "field"},
        {**ready, "site": "site-b", "run_id": "r1-x"},
    ]
    for body in crafted:
        _send(cloud, body)
    # When the inbound loop runs once
    service.inbound.tick()
    # Then the genuine results reached PACS and EHR, undelayed
    assert sorted(ds.Modality for ds in pacs.received()) == ["SEG", "SR"]
    assert len(ehr.received) == 1
    assert service.journal.run(run.run_id).stage == "delivered"  # type: ignore[union-attr]
    # And every crafted message is recorded as rejected and gone from the queue
    rejected = service.journal.rejected_results()
    assert len(rejected) == len(crafted) and _queue_left(cloud) == 0
    assert all(r.run_id is None for r in rejected)  # none named a run it could touch
    assert any("run_id" in r.reason for r in rejected)
    # And nothing was created outside the forwarder's folders
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert sorted(p.name for p in (tmp_path / "state" / "deliveries").iterdir()) == []
    out = capsys.readouterr().out
    assert "Traceback" not in out and "injection" not in out


def test_tampered_results_and_unreadable_crosswalk_fail_their_run_only(
    tmp_path: Path,
    cloud: CloudSide,
    pacs: Pacs,
    ehr: Ehr,
    capsys: pytest.CaptureFixture[str],
    deployed_logging: io.StringIO,
) -> None:
    # Given genuine results for one study, and before them on the queue:
    service, run = _answered(tmp_path, cloud, pacs, ehr)
    genuine_sr = envelope.decrypt_bytes(
        client("s3")
        .get_object(
            Bucket=BUCKET, Key=result_key(SITE, run.pseudo_study_uid, run.run_id, "sr.dcm")
        )["Body"]
        .read(),
        cloud.key_arn,
        encryption_context(SITE, run.pseudo_study_uid),
    )
    # - a result whose ciphertext was altered in S3
    key = _put_result(cloud, run.pseudo_study_uid, "r9-tampered", "sr.dcm", genuine_sr)
    stored = bytearray(client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())
    stored[-40] ^= 0xFF
    client("s3").put_object(Bucket=BUCKET, Key=key, Body=bytes(stored))
    # - a "SEG" that is really some other object of this study
    _put_result(cloud, run.pseudo_study_uid, "r9-wrong-class", "seg.dcm", genuine_sr)
    # - a result for a study whose crosswalk row was altered on disk (CrosswalkError)
    forged = pydicom.dcmread(io.BytesIO(genuine_sr))
    forged.StudyInstanceUID = FORGED_STUDY
    out = io.BytesIO()
    forged.save_as(out, enforce_file_format=True)
    _put_result(cloud, FORGED_STUDY, "r9-crosswalk", "sr.dcm", out.getvalue())
    with sqlite3.connect(tmp_path / "state" / "crosswalk.sqlite") as db:
        db.execute(
            "INSERT INTO study VALUES (?, ?, ?, ?, ?)",
            (FORGED_STUDY, SITE, "ANON-X", 1, b"\x00" * 60),
        )
    for study_uid, run_id, name in (
        (run.pseudo_study_uid, "r9-tampered", "sr.dcm"),
        (run.pseudo_study_uid, "r9-wrong-class", "seg.dcm"),
        (FORGED_STUDY, "r9-crosswalk", "sr.dcm"),
    ):
        _send(
            cloud,
            {
                "kind": "RESULT_READY",
                "site": SITE,
                "pseudo_study_uid": study_uid,
                "run_id": run_id,
                "result_keys": {name: result_key(SITE, study_uid, run_id, name)},
            },
        )
    # When the inbound loop runs once
    service.inbound.tick()
    # Then the genuine results were delivered in the same pass
    assert sorted(ds.Modality for ds in pacs.received()) == ["SEG", "SR"]
    assert service.journal.run(run.run_id).stage == "delivered"  # type: ignore[union-attr]
    # And each bad one FAILED its own run with a reason, was recorded and acknowledged
    reasons = {r.run_id: r.reason for r in service.journal.rejected_results()}
    assert set(reasons) == {"r9-tampered", "r9-wrong-class", "r9-crosswalk"}
    assert "cannot be decrypted" in reasons["r9-tampered"]
    assert "not the contract's" in reasons["r9-wrong-class"]
    assert "crosswalk entry cannot be read" in reasons["r9-crosswalk"]
    for run_id in reasons:
        failed = service.journal.run(run_id)
        assert failed is not None and failed.stage == "FAILED"
        assert (failed.reason or "").startswith("result rejected: ")
    assert _queue_left(cloud) == 0
    # And the log has one line per rejection, no traceback, no exception text; status shows them
    logged = deployed_logging.getvalue()
    assert logged.count('"event": "result_rejected"') == 3
    assert "Traceback" not in logged and "loop_error" not in logged and "InvalidTag" not in logged
    assert main(["status", "--config", str(tmp_path / "forwarder.toml")]) == 0
    assert "result rejected" in capsys.readouterr().out


def test_purge_deletes_only_inside_state_dir(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr
) -> None:
    # Given a finished run, and journal rows edited on disk to aim at other folders
    service, run = _answered(tmp_path, cloud, pacs, ehr)
    service.inbound.tick()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not the forwarder's")
    deliveries = tmp_path / "state" / "deliveries"
    deliveries.mkdir(exist_ok=True)
    (deliveries / "r8-link").symlink_to(victim)  # a symlink out of state_dir
    for run_id in ("../../victim", "r8-link"):
        service.journal.open_run(
            run_id, f"edited-{run_id}", 1, run.pseudo_study_uid, stage=EdgeStage.DELIVERED
        )
    # When old runs are purged
    config = tmp_path / "forwarder.toml"
    assert main(["--config", str(config), "purge", "--older-than-days", "-1"]) == 0
    # Then the victim folder is intact; the genuine run is forgotten, the edited ones kept
    assert (victim / "keep.txt").read_text() == "not the forwarder's"
    assert service.journal.run(run.run_id) is None
    assert service.journal.run("../../victim") is not None
