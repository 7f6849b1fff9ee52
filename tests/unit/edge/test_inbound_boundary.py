"""The inbound boundary alone: outages wait, bad results are rejected, neither blocks the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_forwarder.crosswalk import CrosswalkError
from edge_forwarder.identity import StudyIdentity
from edge_forwarder.inbound import IdentifierSystems, Inbound
from edge_forwarder.observability import Telemetry
from edge_forwarder.transport.errors import TransientError
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from imaging_ai.contracts import SR_NAME, SiteResultMessage, result_key
from imaging_ai.edge_stage import EdgeStage
from tests.unit.edge.conftest import FakeEhr, FakePacs, FakeResults, make_delivery
from tests.unit.edge.test_inbound import IDENTITY, PSEUDO_STUDY, _sr

GOOD, OTHER = "r1-good", "r2-other"


@dataclass
class FlakyResults(FakeResults):
    """A results source whose S3/KMS side is down for some runs."""

    down_for: frozenset[str] = frozenset()

    def fetch(self, message: SiteResultMessage) -> dict[str, bytes]:
        if message.run_id in self.down_for:
            raise TransientError("S3 unreachable")
        return super().fetch(message)


class Vault:
    """A crosswalk whose rows for some studies no longer decrypt (wrong key, altered row)."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken

    def study_by_pseudo(self, pseudo_study_uid: str) -> StudyIdentity | None:
        if pseudo_study_uid in self.broken:
            raise CrosswalkError("crosswalk row does not decrypt under this key")
        return IDENTITY


def _audit(telemetry: Telemetry) -> list[dict[str, Any]]:
    return [json.loads(line) for line in telemetry.audit.path.read_text().splitlines()]


def _ready(run_id: str) -> SiteResultMessage:
    return SiteResultMessage(
        kind="RESULT_READY",
        site="site-a",
        pseudo_study_uid=PSEUDO_STUDY,
        run_id=run_id,
        result_keys={SR_NAME: result_key("site-a", PSEUDO_STUDY, run_id, SR_NAME)},
    )


def _inbound(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, results: FakeResults, vault: Vault
) -> tuple[Inbound, FakePacs]:
    pacs = FakePacs()
    for run_id in (GOOD, OTHER):
        journal.open_run(run_id, f"key-{run_id}", 1, PSEUDO_STUDY, stage=EdgeStage.UPLOADED)
    inbound = Inbound(
        journal=journal,
        results=results,
        identities=vault,
        identifier_systems=IdentifierSystems(patient="urn:mrn", accession="urn:acc"),
        delivery=make_delivery(journal, telemetry, pacs, FakeEhr(), tmp_path / "deliveries"),
        telemetry=telemetry,
        deliveries_dir=tmp_path / "deliveries",
    )
    return inbound, pacs


def test_an_outage_leaves_its_message_queued_and_others_go_on(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given S3 down for one run's objects, and another run's results ready
    results = FlakyResults(down_for=frozenset({OTHER}))
    inbound, pacs = _inbound(tmp_path, journal, telemetry, results, Vault(set()))
    results.send(_ready(OTHER), {SR_NAME: _sr()})
    results.send(_ready(GOOD), {SR_NAME: _sr()})
    # When the inbound loop runs
    inbound.tick()
    # Then the outage's message is not acknowledged (it comes back), its run unchanged
    assert results.acked == ["receipt-1"]
    assert journal.run(OTHER).stage is EdgeStage.UPLOADED  # type: ignore[union-attr]
    assert journal.rejected_results() == []
    # And the other run was delivered in the same pass
    assert len(pacs.stored) == 1
    assert journal.run(GOOD).stage is EdgeStage.DELIVERED  # type: ignore[union-attr]


def test_crosswalk_error_is_translated_at_the_boundary(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a crosswalk that cannot open the study of the first message
    results = FakeResults()
    inbound, pacs = _inbound(tmp_path, journal, telemetry, results, Vault({PSEUDO_STUDY}))
    results.send(_ready(OTHER), {SR_NAME: _sr()})
    # When the inbound loop runs (before: CrosswalkError escaped the loop, unacknowledged)
    inbound.tick()
    # Then the run FAILED with a reason, the message is recorded and acknowledged
    run = journal.run(OTHER)
    assert run is not None and run.stage is EdgeStage.FAILED
    assert (
        run.reason == "result rejected: crosswalk entry cannot be read (wrong key or tampered row)"
    )
    (rejected,) = journal.rejected_results()
    assert rejected.run_id == OTHER and results.acked == ["receipt-0"] and pacs.stored == []
    # And the refusal is in the audit trail (DCM 110107 Import, outcome 8 = failure)
    (event,) = [e for e in _audit(telemetry) if e["type"]["code"] == "110107"]
    assert event["outcome"] == "8" and "crosswalk entry cannot be read" in event["outcomeDesc"]


def test_a_delivery_row_edited_to_point_elsewhere_is_dead_lettered_not_read(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a PENDING delivery whose folder (edited in the journal) is outside deliveries/
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / SR_NAME).write_bytes(b"not ours to send")
    results = FakeResults()
    inbound, pacs = _inbound(tmp_path, journal, telemetry, results, Vault(set()))
    journal.advance(OTHER, EdgeStage.RESULTS_RECEIVED)
    journal.advance(OTHER, EdgeStage.REIDENTIFIED)
    journal.set_delivery(OTHER, DeliveryTarget.PACS, DeliveryState.PENDING, payload_dir=outside)
    results.send(_ready(GOOD), {SR_NAME: _sr()})
    # When the inbound loop runs
    inbound.tick()
    # Then that delivery is dead-lettered with a reason, and nothing of it reached PACS
    (dead,) = journal.deliveries(state=DeliveryState.DEAD_LETTER)
    assert dead.run_id == OTHER and "refused" in (dead.last_error or "")
    assert b"not ours to send" not in pacs.stored
    # And the genuine result was still delivered
    assert len(pacs.stored) == 1


class FlakyVault(Vault):
    """A crosswalk on a disk that fails once (an I/O error), then reads again."""

    def __init__(self) -> None:
        super().__init__(set())
        self.failures = 1

    def study_by_pseudo(self, pseudo_study_uid: str) -> StudyIdentity | None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        return super().study_by_pseudo(pseudo_study_uid)


def test_a_result_taken_again_after_a_transient_failure_is_delivered(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a result whose re-identification meets a transient I/O error the first time
    results = FakeResults()
    inbound, pacs = _inbound(tmp_path, journal, telemetry, results, FlakyVault())
    results.send(_ready(GOOD), {SR_NAME: _sr()})
    # When the inbound loop runs, Then the message waits on the queue, unrejected
    inbound.tick()
    assert results.acked == [] and journal.rejected_results() == []
    # When it runs again (the queue hands the message out again)
    inbound.tick()
    # Then the result is delivered: the run does not trip over the stage it already reached
    assert results.acked == ["receipt-0"] and len(pacs.stored) == 1
    assert journal.run(GOOD).stage is EdgeStage.DELIVERED  # type: ignore[union-attr]
