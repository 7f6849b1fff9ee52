"""Delivery alone: retries, dead letters, the operator's retry, and the run's end."""

from __future__ import annotations

import json
from pathlib import Path

from edge_forwarder.delivery import PacsDestination
from edge_forwarder.observability import Telemetry
from edge_forwarder.result_objects import PDF_REPORT_NAME, ResultObject
from edge_forwarder.transport.backoff import Backoff, RetryPolicy
from edge_forwarder.transport.ehr import EhrRejected
from edge_forwarder.transport.errors import PermanentError, TransientError
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from imaging_ai.contracts import BUNDLE_NAME, KEY_IMAGES_NAME, SEG_NAME, SR_NAME
from imaging_ai.edge_stage import EdgeStage
from tests.unit.edge.conftest import FakeEhr, FakePacs, make_delivery

RUN_ID = "r1-0123456789"


def _reidentified_run(journal: Journal, folder: Path) -> Path:
    """A run whose re-identified SR, SEG and Bundle wait in its delivery folder."""
    journal.open_run(RUN_ID, "key-1", 1, "2.25.7", stage=EdgeStage.UPLOADED)
    journal.advance(RUN_ID, EdgeStage.RESULTS_RECEIVED)
    journal.advance(RUN_ID, EdgeStage.REIDENTIFIED)
    payload = folder / RUN_ID
    payload.mkdir(parents=True)
    (payload / SR_NAME).write_bytes(b"sr")
    (payload / SEG_NAME).write_bytes(b"seg")
    (payload / BUNDLE_NAME).write_text(json.dumps({"resourceType": "Bundle"}))
    for target in (DeliveryTarget.PACS, DeliveryTarget.EHR):
        journal.set_delivery(RUN_ID, target, DeliveryState.PENDING, payload_dir=payload)
    return payload


def test_transient_failures_are_retried_until_both_targets_have_the_results(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a PACS busy twice and an EHR down once
    pacs = FakePacs(failures=[TransientError("busy"), TransientError("busy")])
    ehr = FakeEhr(failures=[TransientError("HTTP 503")])
    delivery = make_delivery(journal, telemetry, pacs, ehr, tmp_path / "d")
    _reidentified_run(journal, tmp_path / "d")
    # When the pending deliveries are worked
    delivery.deliver_pending()
    # Then both got the results after their retries, and the run is delivered
    assert pacs.stored == [b"sr", b"seg"] and len(ehr.posted) == 1
    attempts = {d.target: d.attempts for d in journal.deliveries(run_id=RUN_ID)}
    assert attempts == {DeliveryTarget.PACS: 3, DeliveryTarget.EHR: 2}
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.DELIVERED
    notes = [stage for _, stage, _ in journal.timeline(RUN_ID)]
    assert notes.count("retry_pacs") == 2 and notes.count("retry_ehr") == 1


def test_a_refusing_pacs_is_dead_lettered_and_delivered_after_the_operators_retry(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a PACS that refuses every attempt
    pacs = FakePacs(failures=[PermanentError("rejected")] * 3)
    delivery = make_delivery(journal, telemetry, pacs, FakeEhr(), tmp_path / "d")
    _reidentified_run(journal, tmp_path / "d")
    # When the pending deliveries are worked
    delivery.deliver_pending()
    # Then PACS is a dead letter after three attempts, the EHR has its Bundle
    (dead,) = journal.deliveries(state=DeliveryState.DEAD_LETTER)
    assert dead.target is DeliveryTarget.PACS and dead.attempts == 3
    assert telemetry.metrics.dead_letters._value.get() == 1
    # When the operator queues it again (`edge-forwarder retry`) and the PACS accepts
    journal.set_delivery(RUN_ID, DeliveryTarget.PACS, DeliveryState.PENDING)
    delivery.deliver_pending()
    # Then the run ends delivered
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.DELIVERED
    assert pacs.stored == [b"sr", b"seg"]


def test_an_ehr_refusal_is_not_retried_and_keeps_the_operation_outcome(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"code": "invalid"}]}
    ehr = FakeEhr(failures=[EhrRejected(422, outcome)])
    delivery = make_delivery(journal, telemetry, FakePacs(), ehr, tmp_path / "d")
    payload = _reidentified_run(journal, tmp_path / "d")
    delivery.deliver_pending()
    (row,) = journal.deliveries(state=DeliveryState.DEAD_LETTER)
    assert row.target is DeliveryTarget.EHR and row.attempts == 1
    assert json.loads((payload / "ehr-operation-outcome.json").read_text()) == outcome
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.DEAD_LETTER_EHR


def test_each_pacs_destination_gets_its_objects_and_a_retry_skips_those_served(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a main PACS taking SR + SEG, and a viewer PACS taking key images + PDF that
    # refuses every attempt at first
    main, viewer = FakePacs(), FakePacs(ae_title="VIEWER", failures=[PermanentError("no")] * 3)
    delivery = make_delivery(journal, telemetry, main, FakeEhr(), tmp_path / "d")
    delivery.extra_pacs = [
        PacsDestination(
            "viewer",
            viewer,
            (ResultObject.KEY_IMAGES, ResultObject.PDF),
            RetryPolicy(3, Backoff(0.0, 0.0)),
        )
    ]
    payload = _reidentified_run(journal, tmp_path / "d")
    (payload / KEY_IMAGES_NAME).write_bytes(b"key")
    (payload / PDF_REPORT_NAME).write_bytes(b"pdf")
    # When the pending deliveries are worked
    delivery.deliver_pending()
    # Then the main PACS has exactly its objects, and the PACS delivery is a dead letter
    # that names the destination that refused
    assert main.stored == [b"sr", b"seg"] and viewer.stored == []
    (dead,) = journal.deliveries(state=DeliveryState.DEAD_LETTER)
    assert dead.target is DeliveryTarget.PACS and str(dead.last_error).startswith("viewer:")
    # When the operator queues it again and the viewer accepts
    journal.set_delivery(RUN_ID, DeliveryTarget.PACS, DeliveryState.PENDING)
    delivery.deliver_pending()
    # Then only the viewer was sent to (the main PACS is not sent its objects twice)
    assert main.stored == [b"sr", b"seg"] and viewer.stored == [b"key", b"pdf"]
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.DELIVERED
