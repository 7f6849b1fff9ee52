"""Critical findings: a notice to the site before anything else is delivered, and audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_forwarder.config import CriticalSection
from edge_forwarder.critical import critical_findings
from edge_forwarder.inbound import IdentifierSystems, Inbound
from edge_forwarder.observability import Telemetry
from edge_forwarder.transport.errors import PermanentError, TransientError
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from imaging_ai.contracts import BUNDLE_NAME, SR_NAME
from imaging_ai.edge_stage import EdgeStage
from tests.unit.edge.conftest import FakeEhr, FakePacs, FakeResults, make_delivery
from tests.unit.edge.test_inbound import (
    IDENTITY,
    PSEUDO_PATIENT,
    PSEUDO_STUDY,
    RUN_ID,
    Vault,
    _ready,
    _sr,
    _uploaded_run,
)

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
HEMORRHAGE = {"coding": [{"system": "http://snomed.info/sct", "code": "1386000"}],
              "text": "Intracranial hemorrhage"}  # fmt: skip


def _report(interpretation: str) -> bytes:
    """A cloud report (pseudonymous patient) whose triage Observation reads `interpretation`."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "identifier": [{"value": PSEUDO_PATIENT}]},
        {
            "resourceType": "ImagingStudy",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{PSEUDO_STUDY}"}],
        },
        {
            "resourceType": "Observation",
            "code": HEMORRHAGE,
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": interpretation}]}],
            "note": [{"text": "Intracranial hemorrhage suspected: yes (probability 0.97)."}],
        },
        {
            "resourceType": "DiagnosticReport",
            "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.999"}],
        },
    ]
    entries = [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources
    ]
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


class RecordingWebhook:
    """The site's webhook as the delivery sees it; `failures` are raised first."""

    destination = "webhook"

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.received: list[dict[str, Any]] = []

    def notify(self, communication: dict[str, Any]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.received.append(communication)


def _inbound(
    journal: Journal, telemetry: Telemetry, folder: Path, webhook: RecordingWebhook | None = None
) -> tuple[Inbound, FakeResults, FakeEhr]:
    results, ehr = FakeResults(), FakeEhr()
    delivery = make_delivery(journal, telemetry, FakePacs(), ehr, folder)
    if webhook is not None:
        delivery.critical = webhook
    inbound = Inbound(
        journal=journal,
        results=results,
        identities=Vault(IDENTITY),
        identifier_systems=IdentifierSystems(patient="urn:mrn", accession="urn:acc"),
        delivery=delivery,
        telemetry=telemetry,
        deliveries_dir=folder,
    )
    return inbound, results, ehr


def _audit(telemetry: Telemetry) -> list[dict[str, Any]]:
    lines = telemetry.audit.path.read_text().splitlines()
    return [json.loads(line) for line in lines]


def _critical_audits(telemetry: Telemetry) -> list[dict[str, Any]]:
    return [e for e in _audit(telemetry) if e["subtype"][0]["code"] == "critical_notice"]


def test_a_critical_result_sends_a_communication_to_the_ehr_first_and_audits_it(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given an uploaded run whose report holds a critical (AA) finding
    inbound, results, ehr = _inbound(journal, telemetry, tmp_path / "d")
    _uploaded_run(journal)
    results.send(_ready(), {SR_NAME: _sr(), BUNDLE_NAME: _report("AA")})
    # When the inbound loop takes the result
    inbound.tick()
    # Then the EHR's first POST is the Communication, about the re-identified patient
    first, second = ehr.posted
    (entry,) = first["entry"]
    notice = entry["resource"]
    assert entry["request"] == {"method": "POST", "url": "Communication"}
    assert (notice["resourceType"], notice["priority"], notice["status"]) == (
        "Communication",
        "stat",
        "completed",
    )
    assert notice["subject"]["identifier"] == {"system": "urn:mrn", "value": "MRN-0042"}
    assert notice["about"][0]["identifier"]["value"] == "urn:oid:2.25.999"
    assert "Intracranial hemorrhage" in notice["payload"][0]["contentString"]
    assert PSEUDO_PATIENT not in json.dumps(notice)
    # ... then the report itself; the notice is audited (pseudonymously) and on the timeline
    assert any(e["resource"]["resourceType"] == "DiagnosticReport" for e in second["entry"])
    (audit,) = _critical_audits(telemetry)
    assert audit["outcome"] == "0"
    assert "MRN-0042" not in json.dumps(audit)
    stages = [stage for _, stage, _ in journal.timeline(RUN_ID)]
    assert EdgeStage.NOTIFIED_CRITICAL in stages
    run = journal.run(RUN_ID)
    assert run is not None and run.stage is EdgeStage.DELIVERED


def test_a_result_without_a_critical_finding_sends_no_notice(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a report whose triage Observation reads normal
    inbound, results, ehr = _inbound(journal, telemetry, tmp_path / "d")
    _uploaded_run(journal)
    results.send(_ready(), {SR_NAME: _sr(), BUNDLE_NAME: _report("N")})
    # When it is taken, Then only the report goes to the EHR and nothing is audited as critical
    inbound.tick()
    (posted,) = ehr.posted
    assert all(e["resource"]["resourceType"] != "Communication" for e in posted["entry"])
    assert _critical_audits(telemetry) == []
    targets = {d.target for d in journal.deliveries(run_id=RUN_ID)}
    assert targets == {DeliveryTarget.EHR, DeliveryTarget.PACS}


def test_a_webhook_gets_the_notice_after_a_transient_failure(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a configured webhook that is down once
    webhook = RecordingWebhook(TransientError("webhook answered HTTP 503"))
    inbound, results, ehr = _inbound(journal, telemetry, tmp_path / "d", webhook)
    _uploaded_run(journal)
    results.send(_ready(), {SR_NAME: _sr(), BUNDLE_NAME: _report("AA")})
    # When the result is taken
    inbound.tick()
    # Then the webhook got the notice on the retry, the EHR only the report, and it is audited
    (notice,) = webhook.received
    assert notice["resourceType"] == "Communication"
    (posted,) = ehr.posted
    assert all(e["resource"]["resourceType"] != "Communication" for e in posted["entry"])
    (audit,) = _critical_audits(telemetry)
    assert audit["outcome"] == "0"
    rows = {d.target: d for d in journal.deliveries(run_id=RUN_ID)}
    assert rows[DeliveryTarget.CRITICAL].attempts == 2


def test_a_refused_notice_is_dead_lettered_and_audited_as_failed(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given a webhook that refuses the notice
    webhook = RecordingWebhook(PermanentError("webhook answered HTTP 400"))
    inbound, results, _ = _inbound(journal, telemetry, tmp_path / "d", webhook)
    _uploaded_run(journal)
    results.send(_ready(), {SR_NAME: _sr(), BUNDLE_NAME: _report("AA")})
    # When the result is taken
    inbound.tick()
    # Then the notice is a visible dead letter, audited with a failure outcome
    rows = {d.target: d for d in journal.deliveries(run_id=RUN_ID)}
    assert rows[DeliveryTarget.CRITICAL].state is DeliveryState.DEAD_LETTER
    (audit,) = _critical_audits(telemetry)
    assert audit["outcome"] == "8"
    stages = [stage for _, stage, _ in journal.timeline(RUN_ID)]
    assert EdgeStage.DEAD_LETTER_CRITICAL in stages


def test_a_critical_report_must_name_its_patient_and_report() -> None:
    # Given a critical Observation in a Bundle that lacks its DiagnosticReport
    bundle = json.loads(_report("AA"))
    bundle["entry"] = [
        e for e in bundle["entry"] if e["resource"]["resourceType"] != "DiagnosticReport"
    ]
    # Then it is refused rather than announced about nobody
    with pytest.raises(PermanentError):
        critical_findings(bundle)


def test_the_critical_section_refuses_a_webhook_without_a_safe_url() -> None:
    # A webhook channel needs its URL, and a notice about a patient never travels in clear
    with pytest.raises(ValidationError):
        CriticalSection(channel="webhook")
    with pytest.raises(ValidationError):
        CriticalSection(channel="webhook", webhook_url="http://paging.hospital.example/hook")
    assert CriticalSection(channel="webhook", webhook_url="https://paging.example/h").webhook_url
