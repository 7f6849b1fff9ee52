"""The demo's second study: a tilted trauma head CT for the hemorrhage model, and its notice.

What the site sees is read from where the site would look: the SR in the PACS (the flag and its
probability), the forwarder's audit log (the critical notice, and how soon after the result
it went), and the EHR (the Communication).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from imaging_ai.edge_stage import TERMINAL_EDGE_STAGES
from imaging_ai.inference.hemorrhage import MODEL_NAME, MODEL_VERSION
from imaging_ai.local.runtime import LocalPipeline
from imaging_ai.model_registry import REPOSITORY_REGISTRY
from imaging_ai.results.report_content import COMPREHENSIVE_3D_SR, ReportContent, read_report
from imaging_ai.synthetic import FakePatient
from imaging_ai.synthetic_head import HeadStudy

CRITICAL_NOTICE = "critical_notice"
HEMORRHAGE_MODEL_DIR = REPOSITORY_REGISTRY / MODEL_NAME / MODEL_VERSION
# A second fake patient: the privacy audit searches the cloud for these values too. Name parts
# are long on purpose: the audit searches every byte, 8-bit key-image pixels included, and a
# brain window's mid-grays spell a 5-letter name by chance (measured: "KOVAC" in the pixels).
HEAD_PATIENT = FakePatient(
    patient_name="MONTGOMERY^BARTHOLOMEW^T",
    patient_id="MRN-5150-2231",
    other_patient_id="SSN-219-09-9999",
    birth_date="19710405",
    sex="M",
    age="055Y",
    accession_number="ACC-2026-77410",
    referring_physician="KOWALCZYK^EVANGELINE",
    performing_physician="FITZGERALD^WILHELMINA",
    operator="HATHAWAY^GWENDOLYN",
    study_id="STUDY-77410",
    requested_procedure_id="RP-77410-HEAD",
    private_note="PT MONTGOMERY BARTHOLOMEW MRN-5150-2231 FALL FROM LADDER",
)


def head_phi(study: HeadStudy, patient: FakePatient = HEAD_PATIENT) -> dict[str, str]:
    """The head study's fake PHI and original study UID, named apart from the chest study's."""
    values = {**patient.phi_by_field(), "study_instance_uid": study.study_instance_uid}
    return {f"head {name}": value for name, value in values.items()}


def wait_for_runs(pipeline: LocalPipeline, count: int, timeout_s: float) -> bool:
    """Until the forwarder's status shows `count` runs ended (every study's every model);
    True when all of them were delivered."""
    deadline = time.monotonic() + timeout_s
    terminal = {str(stage) for stage in TERMINAL_EDGE_STAGES}
    while True:
        runs = pipeline.edge_status()
        if len(runs) >= count and all(str(run["stage"]) in terminal for run in runs):
            return all(str(run["stage"]) == "delivered" for run in runs)
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)  # a demo's wait, not a test's synchronisation: status is a subprocess


def ehr_communications(pipeline: LocalPipeline, patient_id: str) -> int:
    """Communications in the EHR about the patient (subject by MRN, as the edge writes it)."""
    assert pipeline.ehr is not None
    return sum(
        1
        for notice in pipeline.ehr.search("Communication")
        if notice.get("subject", {}).get("identifier", {}).get("value") == patient_id
    )


@dataclass
class HeadSummary:
    """The head study's outcome as the site sees it; the e2e test asserts on the same facts."""

    study_instance_uid: str
    tilt_deg: float
    truth_bleeds_ml: list[float]
    report: str = ""  # the SR's text report (flag, probability, findings), "" when none arrived
    suspected: bool = False
    critical: bool = False
    notices: list[dict[str, Any]] = field(default_factory=list)  # critical_notice AuditEvents
    notice_after_result_s: float | None = None  # re-identified -> notice accepted
    ehr_communications: int = 0

    @property
    def notified(self) -> bool:
        return any(event.get("outcome") == "0" for event in self.notices)


def head_report(pipeline: LocalPipeline, study_instance_uid: str) -> ReportContent | None:
    """The SR the PACS holds for the study (the re-identified one the forwarder delivered)."""
    assert pipeline.pacs is not None
    for instance in pipeline.pacs.study_instances(study_instance_uid):
        if str(instance["Tags"].get("SOPClassUID", "")) == COMPREHENSIVE_3D_SR:
            answer = requests.get(
                f"{pipeline.pacs.rest_url}/instances/{instance['ID']}/file", timeout=30
            )
            answer.raise_for_status()
            return read_report(answer.content)
    return None


def _audit_events(audit_log: Path) -> list[dict[str, Any]]:
    if not audit_log.exists():
        return []
    return [json.loads(line) for line in audit_log.read_text().splitlines() if line.strip()]


def _run_id(event: dict[str, Any]) -> str:
    for entity in event.get("entity", []):
        for detail in entity.get("detail", []):
            if detail.get("type") == "run_id":
                return str(detail.get("valueString", ""))
    return ""


def _subtype(event: dict[str, Any]) -> str:
    return str((event.get("subtype") or [{}])[0].get("code", ""))


def collect_head_summary(
    pipeline: LocalPipeline, study: HeadStudy, ehr_communications: int
) -> HeadSummary:
    summary = HeadSummary(
        study_instance_uid=study.study_instance_uid,
        tilt_deg=study.tilt_deg,
        truth_bleeds_ml=[round(b.volume_ml, 2) for b in study.head.bleeds],
        ehr_communications=ehr_communications,
    )
    report = head_report(pipeline, study.study_instance_uid)
    if report is not None:
        summary.report = report.conclusion()
        summary.suspected = "suspected: yes" in summary.report
        summary.critical = "CRITICAL FINDING" in summary.report
    events = _audit_events(pipeline.edge_state_dir / "audit.jsonl")
    summary.notices = [e for e in events if _subtype(e) == CRITICAL_NOTICE]
    reidentified = {_run_id(e): e["recorded"] for e in events if _subtype(e) == "reidentify"}
    for notice in summary.notices:
        start = reidentified.get(_run_id(notice))
        if start is not None and notice.get("outcome") == "0":
            delta = datetime.fromisoformat(notice["recorded"]) - datetime.fromisoformat(start)
            summary.notice_after_result_s = round(delta.total_seconds(), 2)
    return summary


def print_head_summary(summary: HeadSummary, out: Any = print) -> None:
    out(f"Head CT (gantry tilt {summary.tilt_deg:g} deg), study {summary.study_instance_uid}:")
    out(f"  ground truth bleeds (mL): {summary.truth_bleeds_ml}")
    if not summary.report:
        out("  no SR in the PACS")
        return
    flag = "CRITICAL" if summary.critical else ("suspected" if summary.suspected else "negative")
    out(f"  report flagged: {flag}")
    out(f"  SR text: {summary.report[:300]}")
    if summary.notified:
        seconds = summary.notice_after_result_s
        after = (
            f" {seconds:.1f} s after the result was re-identified" if seconds is not None else ""
        )
        out(f"  critical notice: sent{after}, audited ({len(summary.notices)} AuditEvent(s));")
        out(f"  the EHR holds {summary.ehr_communications} Communication(s)")
    elif summary.critical:
        out("  critical notice: NOT sent (see the forwarder's audit log and dead letters)")
