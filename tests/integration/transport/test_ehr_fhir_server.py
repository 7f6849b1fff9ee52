"""The edge delivers to a real FHIR R4 server: conditional create keeps one Patient when a
report is sent again, and a resource R4 forbids is refused and dead-lettered with its outcome."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from edge_forwarder.config import EhrSection
from edge_forwarder.delivery import OPERATION_OUTCOME_NAME
from imaging_ai.local.fhir_server import FhirServer, start_fhir_server
from imaging_ai.model_card import Code, TriageFlag
from imaging_ai.model_io import TriageResult
from tests.integration.transport.conftest import CloudSide, Pacs, loopback_http
from tests.integration.transport.helpers import completed_study
from tests.unit.results.sample import demo_card

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed"),
]
MRN_SYSTEM = EhrSection.model_fields["patient_identifier_system"].default
HEMORRHAGE = Code(scheme="SCT", value="1386000", meaning="Intracranial hemorrhage")


# One EHR per test: the synthetic studies share one fake patient, and each test counts what
# the EHR holds for that patient.
@pytest.fixture
def fhir(tmp_path: Path) -> Iterator[FhirServer]:
    server = start_fhir_server(tmp_path / "fhir")
    yield server
    server.stop()


@dataclass
class LostAnswers:
    """In front of the EHR: passes each POST on, but hangs up instead of answering the first
    `lose` of them, as a network that drops the answer after the EHR has committed."""

    url: str
    lose: int
    posts: list[int] = field(default_factory=list)


@pytest.fixture
def lossy_ehr(fhir: FhirServer) -> Iterator[LostAnswers]:
    state = LostAnswers(url="", lose=1)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer = requests.post(
                fhir.base_url + self.path,
                data=body,
                headers={"Content-Type": self.headers["Content-Type"]},
                timeout=30,
            )
            state.posts.append(answer.status_code)
            if len(state.posts) <= state.lose:
                self.close_connection = True  # committed by the EHR, never answered
                return
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, format: str, *args: Any) -> None:
            return

    with loopback_http(Handler) as url:
        state.url = url
        yield state


def _mrn(study_patient_id: str) -> str:
    return f"{MRN_SYSTEM}|{study_patient_id}"


def test_a_report_sent_again_gives_one_patient_and_one_report_per_run(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, fhir: FhirServer, lossy_ehr: LostAnswers
) -> None:
    # Given a study uploaded by the edge, whose EHR answer will be lost once
    edge = completed_study(tmp_path, cloud, pacs.port, lossy_ehr.url, seed=17)
    edge.forwarder.outbound.tick()
    (run,) = edge.forwarder.journal.runs()
    manifest = cloud.read_manifest(run.pseudo_study_uid)
    cloud.answer(manifest, edge.study)
    # When the edge delivers: the EHR commits, the answer is lost, the edge sends it again
    edge.forwarder.inbound.tick()
    assert lossy_ehr.posts == [200, 200]
    (row,) = [d for d in edge.forwarder.journal.deliveries(run_id=run.run_id) if d.target == "ehr"]
    assert row.state == "DELIVERED" and row.attempts == 2
    # Then the EHR holds the patient once, and this run's report once
    mrn = _mrn(edge.study.patient.patient_id)
    (patient,) = fhir.search("Patient", identifier=mrn)
    (report,) = fhir.search("DiagnosticReport", **{"subject:Patient.identifier": mrn})
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    observations = fhir.search("Observation", subject=f"Patient/{patient['id']}")
    assert sorted(o["id"] for o in observations) == sorted(
        r["reference"].split("/")[1] for r in report["result"]
    )
    # When the cloud re-runs the study (a new run) and the edge delivers that report too
    rerun = manifest.runs[0].model_copy(update={"run_id": "rerun-1"})
    cloud.answer(manifest.model_copy(update={"runs": [rerun]}), edge.study)
    edge.forwarder.inbound.tick()
    # Then the same patient and imaging study carry two reports, one per run
    assert [p["id"] for p in fhir.search("Patient", identifier=mrn)] == [patient["id"]]
    reports = fhir.search("DiagnosticReport", **{"subject:Patient.identifier": mrn})
    assert len(reports) == 2
    assert len({r["identifier"][0]["value"] for r in reports}) == 2
    assert len({r["imagingStudy"][0]["reference"] for r in reports}) == 1
    assert len(fhir.search("Device")) == 1 and len(fhir.search("Organization")) == 1


def test_a_resource_r4_forbids_is_refused_and_dead_lettered_with_its_outcome(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, fhir: FhirServer
) -> None:
    def bogus_status(bundle: dict[str, Any]) -> None:
        report = bundle["entry"][-1]["resource"]
        assert report["resourceType"] == "DiagnosticReport"
        report["status"] = "bogus"

    # Given a cloud whose report carries a status outside R4's required value set
    edge = completed_study(tmp_path, cloud, pacs.port, fhir.base_url, seed=23)
    edge.forwarder.outbound.tick()
    (run,) = edge.forwarder.journal.runs()
    cloud.answer(cloud.read_manifest(run.pseudo_study_uid), edge.study, edit_bundle=bogus_status)
    reports_before = fhir.search("DiagnosticReport")
    # When the edge delivers
    edge.forwarder.inbound.tick()
    # Then the EHR refused it once (no retry of a 4xx), the delivery is dead-lettered with the
    # server's OperationOutcome kept on-prem, and the EHR stored nothing of it
    (row,) = [d for d in edge.forwarder.journal.deliveries(run_id=run.run_id) if d.target == "ehr"]
    assert row.state == "DEAD_LETTER" and row.attempts == 1
    assert "HTTP 400" in (row.last_error or "")
    outcome = json.loads((Path(str(row.payload_dir)) / OPERATION_OUTCOME_NAME).read_text())
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["DiagnosticReport.status"]
    assert fhir.search("DiagnosticReport") == reports_before


def test_a_critical_result_reaches_the_ehr_as_a_communication_before_its_report(
    tmp_path: Path, cloud: CloudSide, pacs: Pacs, fhir: FhirServer
) -> None:
    # Given a study whose model answered its critical triage flag "suspected"
    edge = completed_study(tmp_path, cloud, pacs.port, fhir.base_url, seed=29)
    edge.forwarder.outbound.tick()
    (run,) = edge.forwarder.journal.runs()
    flag = TriageFlag(name="Intracranial hemorrhage suspected", finding=HEMORRHAGE,
                      label_value=1, min_volume_mm3=500.0)  # fmt: skip
    card = demo_card().model_copy(update={"triage": flag, "critical_findings": [HEMORRHAGE]})
    triage = TriageResult(name=flag.name, probability=0.96, suspected=True, critical=True)
    cloud.answer(cloud.read_manifest(run.pseudo_study_uid), edge.study, card=card, triage=triage)
    # When the edge takes the result
    edge.forwarder.inbound.tick()
    # Then the R4 server accepted a stat Communication about the patient, by the hospital MRN,
    # and the report with its critical Observation; the notice is in the audit log
    (notice,) = fhir.search("Communication")
    assert notice["priority"] == "stat"
    assert notice["subject"]["identifier"]["value"] == edge.study.patient.patient_id
    assert "Intracranial hemorrhage suspected: yes" in notice["payload"][0]["contentString"]
    mrn = _mrn(edge.study.patient.patient_id)
    (report,) = fhir.search("DiagnosticReport", **{"subject:Patient.identifier": mrn})
    assert report["conclusionCode"][0]["coding"][0]["code"] == HEMORRHAGE.value
    rows = {d.target: d for d in edge.forwarder.journal.deliveries(run_id=run.run_id)}
    assert rows["critical"].state == "DELIVERED"
    audit_log = edge.forwarder.telemetry.audit.path
    audit = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert [e["outcome"] for e in audit if e["subtype"][0]["code"] == "critical_notice"] == ["0"]
