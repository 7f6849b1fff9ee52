"""Delivery faults with real peers: PACS refusing our AE, EHR 500 then 201, EHR 422."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_forwarder.cli import main
from tests.edge_support import ListIntake
from tests.integration.transport.conftest import (
    CloudSide,
    Ehr,
    Pacs,
    start_storescp,
)
from tests.integration.transport.helpers import completed_study, forwarder_from_config

pytestmark = pytest.mark.integration


def _uploaded_and_answered(tmp: Path, cloud: CloudSide, pacs_port: int, ehr: Ehr, **kw):  # type: ignore[no-untyped-def]
    edge = completed_study(tmp, cloud, pacs_port, ehr.url, seed=3, **kw)
    edge.forwarder.outbound.tick()
    (run,) = edge.forwarder.journal.runs()
    cloud.answer(cloud.read_manifest(run.pseudo_study_uid), edge.study)
    return edge.forwarder, run, edge.config_path


def test_pacs_refusing_our_ae_ends_in_visible_dead_letter_then_retry_delivers(
    tmp_path: Path, cloud: CloudSide, ehr: Ehr, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a PACS that refuses every association (as for an unknown calling AE)
    refusing = start_storescp(tmp_path / "pacs", extra=["--refuse"])
    try:
        forwarder, run, path = _uploaded_and_answered(tmp_path, cloud, refusing.port, ehr)
        # When the inbound loop delivers
        forwarder.inbound.tick()
        # Then PACS delivery is dead-lettered after its retries, the EHR got its Bundle
        (pacs_row,) = forwarder.journal.deliveries(run_id=run.run_id, state="DEAD_LETTER")
        assert pacs_row.target == "pacs" and pacs_row.attempts == 3
        # storescp --refuse sends A-ASSOCIATE-RJ and closes at once; pynetdicom sometimes
        # sees the close first and reports an abort. Either way the reason is recorded.
        assert any(word in (pacs_row.last_error or "") for word in ("rejected", "aborted"))
        assert refusing.received() == [] and len(ehr.received) == 1
        assert main(["status", "--config", str(path)]) == 0
        assert "pacs: DEAD_LETTER after 3 attempt(s)" in capsys.readouterr().out
    finally:
        refusing.process.terminate()
        refusing.process.wait(10)
    # When the PACS admin adds our AE and the operator runs `retry`
    fixed = start_storescp(tmp_path / "pacs2")
    try:
        text = path.read_text().replace(f"port = {refusing.port}", f"port = {fixed.port}")
        path.write_text(text)
        assert main(["retry", "--config", str(path)]) == 0
        forwarder2, _ = forwarder_from_config(path, ListIntake())
        forwarder2.inbound.delivery.deliver_pending()
        # Then the SR and SEG arrive and the run is delivered
        assert len(fixed.received()) == 2
        final = forwarder2.journal.run(run.run_id)
        assert final is not None and final.stage == "delivered"
    finally:
        fixed.process.terminate()
        fixed.process.wait(10)


def test_ehr_500_then_201_is_retried_and_delivered(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr
) -> None:
    # Given an EHR that fails once with 500, then accepts
    ehr.script = [(500, {"resourceType": "OperationOutcome"}), (201, {"resourceType": "Bundle"})]
    forwarder, run, _ = _uploaded_and_answered(tmp_path, cloud, pacs.port, ehr)
    # When the inbound loop delivers
    forwarder.inbound.tick()
    # Then the Bundle was posted twice and the run is delivered
    assert len(ehr.received) == 2 and ehr.received[0] == ehr.received[1]
    (row,) = [d for d in forwarder.journal.deliveries(run_id=run.run_id) if d.target == "ehr"]
    assert row.state == "DELIVERED" and row.attempts == 2
    assert any(stage == "retry_ehr" for _, stage, _ in forwarder.journal.timeline(run.run_id))


def test_ehr_422_is_not_retried_and_keeps_the_operation_outcome(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, ehr: Ehr
) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad reference"}],
    }
    ehr.script = [(422, outcome)]
    forwarder, run, _path = _uploaded_and_answered(tmp_path, cloud, pacs.port, ehr)
    forwarder.inbound.tick()
    assert len(ehr.received) == 1
    (row,) = [d for d in forwarder.journal.deliveries(run_id=run.run_id) if d.target == "ehr"]
    assert row.state == "DEAD_LETTER" and "HTTP 422" in (row.last_error or "")
    kept = Path(str(row.payload_dir)) / "ehr-operation-outcome.json"
    assert json.loads(kept.read_text()) == outcome
