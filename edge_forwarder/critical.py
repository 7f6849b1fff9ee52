"""Critical findings: told to the site at once, as a FHIR Communication or to a webhook.

A result is critical when its re-identified FHIR report holds an Observation interpreted
"critical abnormal" (v3 ObservationInterpretation AA): postprocessing writes that where the
model card declares the finding critical. The notice names the patient by the hospital's own
identifier (plain FHIR, no server-specific reference resolution) and the report by its SR
UID, so the EHR links it to the DiagnosticReport the PACS / EHR delivery brings.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from edge_forwarder.peers import Ehr
from edge_forwarder.transport.errors import PermanentError

INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CRITICAL_CODES = frozenset({"AA", "HH", "LL"})  # critical abnormal, critical high, critical low
_COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"


class CriticalNotifier(Protocol):
    """Where the notice goes (`transport.webhook.WebhookClient`, `EhrCommunication`)."""

    @property
    def destination(self) -> str: ...
    def notify(self, communication: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class CriticalFinding:
    """One critical Observation of a re-identified report, with what names its patient."""

    finding: dict[str, Any]  # the Observation's code (CodeableConcept)
    note: str  # the report's own words, e.g. "... suspected: yes (probability 0.97 ...)"
    patient_identifier: dict[str, Any]  # the hospital MRN (system, value)
    report_identifier: dict[str, Any]  # the DiagnosticReport's identifier (the SR UID)


def _is_critical(observation: dict[str, Any]) -> bool:
    return any(
        coding.get("system") == INTERPRETATION_SYSTEM and coding.get("code") in CRITICAL_CODES
        for concept in observation.get("interpretation", [])
        for coding in concept.get("coding", [])
    )


def critical_findings(bundle: dict[str, Any]) -> list[CriticalFinding]:
    """The critical Observations of a re-identified transaction Bundle (empty: none)."""
    resources = [entry.get("resource", {}) for entry in bundle.get("entry", [])]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        by_kind.setdefault(str(resource.get("resourceType")), []).append(resource)
    critical = [o for o in by_kind.get("Observation", []) if _is_critical(o)]
    if not critical:
        return []
    patients, reports = by_kind.get("Patient", []), by_kind.get("DiagnosticReport", [])
    if len(patients) != 1 or len(reports) != 1:
        raise PermanentError("a critical report must hold one Patient and one DiagnosticReport")
    patient_ids, report_ids = patients[0].get("identifier", []), reports[0].get("identifier", [])
    if not patient_ids or not report_ids:
        raise PermanentError("a critical report names no patient or report identifier")
    patient_identifier = {k: patient_ids[0][k] for k in ("system", "value") if k in patient_ids[0]}
    return [
        CriticalFinding(
            finding=observation["code"],
            note=" ".join(n.get("text", "") for n in observation.get("note", [])).strip(),
            patient_identifier=patient_identifier,
            report_identifier=report_ids[0],
        )
        for observation in critical
    ]


def communication(finding: CriticalFinding, run_id: str, sent: datetime) -> dict[str, Any]:
    """The FHIR R4 Communication announcing one critical finding (an alert, priority stat)."""
    name = finding.finding.get("text") or "critical finding"
    text = f"Critical AI finding: {name}. {finding.note}".strip()
    return {
        "resourceType": "Communication",
        # One notice per run and finding: a redelivery is recognisable as the same notice.
        "identifier": [
            {
                "system": "urn:imaging-ai:critical-notice",
                "value": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{name}")),
            }
        ],
        "status": "completed",
        "category": [{"coding": [{"system": _COMMUNICATION_CATEGORY, "code": "alert"}]}],
        "priority": "stat",
        "subject": {"identifier": finding.patient_identifier},
        "about": [{"identifier": finding.report_identifier, "type": "DiagnosticReport"}],
        "sent": sent.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reasonCode": [finding.finding],
        "payload": [{"contentString": text}],
    }


@dataclass(frozen=True)
class EhrCommunication:
    """The EHR as the notifier: the Communication in a one-entry transaction Bundle, through
    the same client (and OAuth token) the reports go with."""

    ehr: Ehr

    @property
    def destination(self) -> str:
        return "ehr"

    def notify(self, communication: dict[str, Any]) -> None:
        self.ehr.post_transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": communication,
                        "request": {"method": "POST", "url": "Communication"},
                    }
                ],
            }
        )
