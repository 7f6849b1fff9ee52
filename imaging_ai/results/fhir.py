"""FHIR R4 transaction Bundle mirroring the SR: DiagnosticReport, Observations, Device, study."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

import pydicom
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from pydicom.sr.coding import Code

from imaging_ai.errors import ContractError
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import ModelOutputMeta
from imaging_ai.results import codes
from imaging_ai.results.sr import (
    measurement_value,
    procedure_reported,
    tracking_identifier,
    tracking_uid,
    triage_note,
    unreported_findings_note,
)
from imaging_ai.results.uids import result_uid

PSEUDO_PATIENT_SYSTEM: Final = "urn:imaging-ai:pseudo-patient-id"
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
WEIGHTS_SYSTEM: Final = "urn:imaging-ai:weights-sha256"
# One model run's algorithm: name, version and weights together, since two models (or two
# versions of one) may ship identical weights and must still be two Devices.
MODEL_DEVICE_SYSTEM: Final = "urn:imaging-ai:model-device"
TRACKING_UID_SYSTEM: Final = "urn:imaging-ai:tracking-uid"
# One measurement of one SR: a report re-sent by the edge finds its Observations again.
SR_MEASUREMENT_SYSTEM: Final = "urn:imaging-ai:sr-measurement"
DCM_SYSTEM: Final = codes.FHIR_SYSTEMS["DCM"]


def _urn(pseudo_study_uid: str, run_id: str, *role: str) -> str:
    # Deterministic: a redelivered run produces the same Bundle, entry for entry.
    return "urn:uuid:" + str(
        uuid.uuid5(uuid.NAMESPACE_OID, "/".join([pseudo_study_uid, run_id, *role]))
    )


def identifier_search(system: str, value: str) -> str:
    """`identifier=system|value` for a conditional create (Bundle.entry.request.ifNoneExist)."""
    return f"identifier={quote(system, safe=':/')}|{quote(value, safe=':/')}"


# The identifier a conditional create finds a resource by when the edge sends the same report
# again: a run's report and measurements by its SR, the algorithm by model name + version +
# weights. Patient and ImagingStudy go by the hospital's own identifiers, which only the edge
# knows: it adds theirs after re-identification.
_CONDITIONAL_CREATE_SYSTEMS: Final = {
    "DiagnosticReport": DICOM_UID_SYSTEM,
    "Observation": SR_MEASUREMENT_SYSTEM,
    "Device": MODEL_DEVICE_SYSTEM,
}


def model_device_identifier(card: ModelCard) -> str:
    """The value under MODEL_DEVICE_SYSTEM naming one model version with its weights."""
    return f"{card.name}/{card.version}/{card.weights_sha256}"


def _request(resource: dict[str, Any]) -> dict[str, str]:
    kind = resource["resourceType"]
    request = {"method": "POST", "url": kind}
    if kind == "Organization":
        request["ifNoneExist"] = urlencode({"name:exact": resource["name"]}, quote_via=quote)
    elif kind in _CONDITIONAL_CREATE_SYSTEMS:
        system = _CONDITIONAL_CREATE_SYSTEMS[kind]
        value = next(i["value"] for i in resource["identifier"] if i["system"] == system)
        request["ifNoneExist"] = identifier_search(system, value)
    return request


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [codes.fhir_coding(code)], "text": code.meaning}


def _effective(first: pydicom.Dataset, issued: datetime) -> str:
    """Study date (and time where an offset is known) as a FHIR dateTime."""
    date = str(first.get("StudyDate", "") or "")
    if len(date) != 8 or not date.isdigit():
        return issued.strftime("%Y-%m-%dT%H:%M:%SZ")
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    time = str(first.get("StudyTime", "") or "").split(".")[0]
    offset = str(first.get("TimezoneOffsetFromUTC", "") or "")
    # FHIR needs an offset once a time is given; without one, the date alone is honest.
    if len(time) >= 4 and len(offset) == 5 and offset[0] in "+-":
        seconds = time[4:6] or "00"
        return f"{day}T{time[:2]}:{time[2:4]}:{seconds}{offset[:3]}:{offset[3:]}"
    return day


def build_bundle(
    source_headers: Sequence[pydicom.Dataset],
    output: ModelOutputMeta,
    card: ModelCard,
    run_id: str,
    sr: pydicom.Dataset,
    issued: datetime | None = None,
    unreported_findings: int = 0,
) -> dict[str, Any]:
    """Build the R4 transaction Bundle of one run, one Observation per SR measurement.

    Parameters
    ----------
    source_headers: Sequence[pydicom.Dataset]
        De-identified source slices; give the pseudonymous patient and study identifiers.
    output: imaging_ai.model_io.ModelOutputMeta
        The findings the SR reports; the Bundle states the same figures.
    card: imaging_ai.model_card.ModelCard
        The model contract (label codes, Device name, version and weights hash).
    run_id: str
        The run; the same run always gives the same fullUrls.
    sr: pydicom.Dataset
        The SR of this run; its SOP Instance UID identifies the DiagnosticReport.
    issued: datetime | None, optional
        When the report was made (UTC); now by default.
    unreported_findings: int, optional
        Findings the model made beyond those in `output`; the conclusion says how many.

    Returns
    -------
    dict
        R4 transaction Bundle JSON (checked against R4B models and our code checks).
    """
    issued = issued or datetime.now(UTC)
    first = source_headers[0]
    study_uid = str(first.StudyInstanceUID)
    patient_id = str(first.get("PatientID", "") or "")
    if not patient_id:
        raise ContractError("source headers carry no pseudonymous PatientID")
    urls = {
        kind: _urn(study_uid, run_id, kind)
        for kind in ("Patient", "ImagingStudy", "Organization", "Device", "DiagnosticReport")
    }
    subject = {"reference": urls["Patient"]}
    study_ref = {"reference": urls["ImagingStudy"]}
    device_ref = {"reference": urls["Device"], "display": f"{card.name} {card.version}"}
    demo_note = [{"text": codes.NOT_FOR_CLINICAL_USE}] if card.not_for_clinical_use else []

    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": PSEUDO_PATIENT_SYSTEM, "value": patient_id}],
    }
    series = {
        "uid": str(first.SeriesInstanceUID),
        "modality": {"system": DCM_SYSTEM, "code": str(first.Modality)},
        "numberOfInstances": len(source_headers),
    }
    imaging_study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "subject": subject,
        "modality": [series["modality"]],
        "numberOfSeries": 1,
        "numberOfInstances": len(source_headers),
        "series": [series],
    }
    organization = {"resourceType": "Organization", "active": True, "name": card.manufacturer}
    device = {
        "resourceType": "Device",
        "identifier": [
            {"system": WEIGHTS_SYSTEM, "value": card.weights_sha256},
            {"system": MODEL_DEVICE_SYSTEM, "value": model_device_identifier(card)},
        ],
        "status": "active",
        "manufacturer": card.manufacturer,
        "deviceName": [{"name": card.name, "type": "model-name"}],
        "modelNumber": card.version,
        "version": [{"value": card.version}],
        "owner": {"reference": urls["Organization"]},
        "note": demo_note,
    }

    observations: list[tuple[str, dict[str, Any]]] = []
    for finding in sorted(output.findings, key=lambda f: (f.label_value, f.component)):
        label = card.label(finding.label_value)
        track_uid = tracking_uid(study_uid, finding)
        for key in card.measurements:
            concept, unit = codes.MEASUREMENTS[key]
            observation = {
                "resourceType": "Observation",
                "identifier": [
                    {"system": TRACKING_UID_SYSTEM, "value": f"urn:oid:{track_uid}/{key}"},
                    {
                        "system": SR_MEASUREMENT_SYSTEM,
                        "value": f"urn:oid:{sr.SOPInstanceUID}/{track_uid}/{key}",
                    },
                ],
                "status": "final",
                "category": [
                    {"coding": [{"system": codes.OBSERVATION_CATEGORY_SYSTEM, "code": "imaging"}]}
                ],
                "code": _concept(concept),
                "subject": subject,
                "effectiveDateTime": _effective(first, issued),
                "issued": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "valueQuantity": {
                    "value": measurement_value(finding, key),
                    "unit": unit.value,
                    "system": codes.FHIR_SYSTEMS["UCUM"],
                    "code": unit.value,
                },
                "bodySite": _concept(codes.check_card_code(label.finding_site)),
                "derivedFrom": [study_ref],
                "device": device_ref,
                "note": [{"text": f"Tracking identifier: {tracking_identifier(card, finding)}"}],
                # HL7 DICOM SR to FHIR: the group's finding type travels as a component.
                "component": [
                    {
                        "code": _concept(codes.FINDING),
                        "valueCodeableConcept": _concept(codes.check_card_code(label.type)),
                    }
                ],
            }
            observations.append(
                (_urn(study_uid, run_id, "Observation", track_uid, key), observation)
            )

    conclusion = (
        f"{card.name} {card.version} reports {len(output.findings)} finding(s)."
        if output.findings
        else f"{card.name} {card.version} reports no finding."
    )
    conclusion_codes = []
    if output.triage is not None and card.triage is not None:
        triage = _triage_observation(
            output, card, (study_uid, str(sr.SOPInstanceUID)), subject, study_ref, device_ref
        )
        triage["effectiveDateTime"] = _effective(first, issued)
        triage["issued"] = issued.strftime("%Y-%m-%dT%H:%M:%SZ")
        observations.append((_urn(study_uid, run_id, "Observation", "triage"), triage))
        conclusion = f"{conclusion} {triage_note(output.triage, card)}"
        if output.triage.suspected:
            conclusion_codes.append(_concept(codes.check_card_code(card.triage.finding)))
    if unreported_findings:
        conclusion = f"{conclusion} {unreported_findings_note(unreported_findings)}"
    if card.not_for_clinical_use:
        conclusion = f"{conclusion} {codes.NOT_FOR_CLINICAL_USE}"
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr.SOPInstanceUID}"}],
        "status": "final",
        "category": [
            {
                "coding": [
                    codes.fhir_coding(codes.RADIOLOGY_CATEGORY),
                    {"system": codes.DIAGNOSTIC_SERVICE_SYSTEM, "code": "RAD"},
                ]
            }
        ],
        # The imaging procedure (LOINC where mapped), the same concept as SR Procedure Reported.
        "code": _concept(procedure_reported(source_headers)),
        "subject": subject,
        "effectiveDateTime": _effective(first, issued),
        "issued": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
        # R4 performer cannot be a Device: the organisation running the algorithm performs,
        # the Device is named on every Observation and owned by that organisation.
        "performer": [{"reference": urls["Organization"], "display": card.manufacturer}],
        "imagingStudy": [study_ref],
        "result": [{"reference": url} for url, _ in observations],
        "conclusion": conclusion,
        "conclusionCode": conclusion_codes,
    }

    entries: list[tuple[str, dict[str, Any]]] = [
        (urls["Patient"], patient),
        (urls["ImagingStudy"], imaging_study),
        (urls["Organization"], organization),
        (urls["Device"], device),
        *observations,
        (urls["DiagnosticReport"], report),
    ]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": url,
                "resource": {k: v for k, v in resource.items() if v != []},
                "request": _request(resource),
            }
            for url, resource in entries
        ],
    }
    check_bundle(bundle)
    return bundle


def _triage_observation(
    output: ModelOutputMeta,
    card: ModelCard,
    study_and_sr_uids: tuple[str, str],
    subject: dict[str, str],
    study_ref: dict[str, str],
    device_ref: dict[str, str],
) -> dict[str, Any]:
    """The per-study flag: finding present / absent, its probability, and whether it is
    critical (interpretation AA), which is what the EHR's worklist and the edge act on."""
    assert output.triage is not None and card.triage is not None
    triage = output.triage
    if triage.critical:
        interpretation = codes.CRITICAL_ABNORMAL
    else:
        interpretation = codes.ABNORMAL if triage.suspected else codes.NORMAL
    answer = codes.PRESENT if triage.suspected else codes.ABSENT
    study_uid, sr_uid = study_and_sr_uids
    return {
        "resourceType": "Observation",
        "identifier": [
            {
                "system": TRACKING_UID_SYSTEM,
                "value": f"urn:oid:{result_uid(study_uid, 'triage', card.name)}",
            },
            # As every measurement: a re-sent report finds its triage answer again.
            {"system": SR_MEASUREMENT_SYSTEM, "value": f"urn:oid:{sr_uid}/triage"},
        ],
        "status": "final",
        "category": [
            {"coding": [{"system": codes.OBSERVATION_CATEGORY_SYSTEM, "code": "imaging"}]}
        ],
        "code": _concept(codes.check_card_code(card.triage.finding)),
        "subject": subject,
        "valueCodeableConcept": _concept(answer),
        "interpretation": [{"coding": [interpretation]}],
        "derivedFrom": [study_ref],
        "device": device_ref,
        "note": [{"text": triage_note(triage, card)}],
        "component": [
            {
                "code": {"text": "Probability"},
                "valueQuantity": {
                    "value": round(triage.probability * 100.0, 1),
                    "unit": "%",
                    "system": codes.FHIR_SYSTEMS["UCUM"],
                    "code": "%",
                },
            }
        ],
    }


def check_bundle(bundle: dict[str, Any]) -> None:
    """Raise ContractError when the Bundle is not valid R4(B) or carries a code we reject."""
    try:
        Bundle.model_validate(bundle)
    except ValidationError as error:
        raise ContractError(f"bundle is not valid FHIR: {error.error_count()} errors") from error
    problems = codes.bundle_code_problems(bundle)
    if problems:
        raise ContractError("bundle codes rejected: " + "; ".join(problems))
