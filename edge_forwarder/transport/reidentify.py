"""Re-identify cloud results (SR, SEG, FHIR Bundle) with the crosswalk; no pseudonym survives."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from edge_forwarder.identity import StudyIdentity
from edge_forwarder.transport.errors import ReidentificationError


def _local_uid(*parts: str) -> str:
    """A new UID derived from the pseudonymous one: stable, so a re-delivery replaces, not adds."""
    return generate_uid(entropy_srcs=["edge-forwarder-reid", *parts])


def _walk(dataset: Dataset) -> Iterator[Dataset]:
    yield dataset
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def reidentify_dicom(part10: bytes, identity: StudyIdentity, run_id: str) -> bytes:
    """Restore original study/series/FoR/instance UIDs and the patient module in an SR or SEG.

    The result object gets a new SOP Instance UID (and a new series UID when the cloud made
    a new series) so PACS files it into the original study as a new, derived object.
    """
    dataset = pydicom.dcmread(io.BytesIO(part10))
    mapping = identity.uid_map()
    own_sop = str(dataset.SOPInstanceUID)
    own_series = str(dataset.SeriesInstanceUID)
    # The result's own UIDs are cloud-made: replace them with local ones, stable per run.
    mapping.setdefault(own_sop, _local_uid(run_id, own_sop))
    mapping.setdefault(own_series, _local_uid(run_id, own_series))
    for item in _walk(dataset):
        for element in item:
            if element.VR != "UI" or element.value in (None, ""):
                continue
            if element.VM > 1:
                element.value = [mapping.get(str(v), str(v)) for v in element.value]
            else:
                element.value = mapping.get(str(element.value), str(element.value))
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientName = identity.patient_name
    dataset.PatientID = identity.patient_id
    dataset.PatientBirthDate = identity.patient_birth_date
    dataset.PatientSex = identity.patient_sex
    dataset.AccessionNumber = identity.accession_number
    if identity.study_date:
        dataset.StudyDate = identity.study_date
    if identity.study_time:
        dataset.StudyTime = identity.study_time
    dataset.PatientIdentityRemoved = "NO"
    for keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
        if keyword in dataset:
            delattr(dataset, keyword)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert_no_pseudonyms_dicom(data, identity)
    return data


def assert_no_pseudonyms_dicom(part10: bytes, identity: StudyIdentity) -> None:
    """Refuse a dataset where any UI or text value still equals a pseudonym of this study."""
    dataset = pydicom.dcmread(io.BytesIO(part10))
    pseudonyms = identity.pseudonyms()
    for item in _walk(dataset):
        for element in item:
            if element.VR == "SQ" or element.value is None:
                continue
            values = element.value if element.VM > 1 else [element.value]
            if element.VR == "PN":
                # "ANON-X^" is the person name "ANON-X" with an empty given name.
                values = [str(v).rstrip("^") for v in values]
            if any(str(v) in pseudonyms for v in values):
                # The keyword only: the value is a pseudonym, but habits matter.
                raise ReidentificationError(f"pseudonym left in {element.keyword or element.tag}")


def _rewrite_strings(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _rewrite_strings(v, mapping) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_strings(v, mapping) for v in node]
    if isinstance(node, str):
        if node in mapping:
            return mapping[node]
        if node.startswith("urn:oid:") and node[8:] in mapping:
            return "urn:oid:" + mapping[node[8:]]
    return node


def reidentify_bundle(
    bundle: dict[str, Any],
    identity: StudyIdentity,
    *,
    patient_identifier_system: str,
    accession_identifier_system: str,
) -> dict[str, Any]:
    """Put the original patient, accession and study UID into a FHIR transaction Bundle."""
    if bundle.get("resourceType") != "Bundle":
        raise ReidentificationError("result is not a FHIR Bundle")
    mapping = identity.uid_map()
    if identity.pseudo_patient_id:
        mapping[identity.pseudo_patient_id] = identity.patient_id
    result: dict[str, Any] = _rewrite_strings(copy.deepcopy(bundle), mapping)
    for entry in result.get("entry", []):
        resource = entry.get("resource", {})
        kind = resource.get("resourceType")
        if kind == "Patient":
            resource["identifier"] = [
                {
                    "use": "usual",
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR",
                            }
                        ]
                    },
                    "system": patient_identifier_system,
                    "value": identity.patient_id,
                }
            ]
            family, _, given = identity.patient_name.partition("^")
            name: dict[str, Any] = {"family": family}
            if given:
                name["given"] = [g for g in given.split("^") if g]
            resource["name"] = [name]
            if len(identity.patient_birth_date) == 8:
                d = identity.patient_birth_date
                resource["birthDate"] = f"{d[:4]}-{d[4:6]}-{d[6:]}"
            gender = {"F": "female", "M": "male", "O": "other"}.get(identity.patient_sex)
            if gender:
                resource["gender"] = gender
            # A conditional create keyed on the MRN: the EHR links to its existing patient.
            request = entry.setdefault("request", {"method": "POST", "url": "Patient"})
            if request.get("method") == "POST":
                request["ifNoneExist"] = (
                    f"identifier={patient_identifier_system}|{identity.patient_id}"
                )
        if kind == "ImagingStudy":
            identifiers = [
                i for i in resource.get("identifier", []) if i.get("system") == "urn:dicom:uid"
            ] or [{"system": "urn:dicom:uid"}]
            identifiers[0]["value"] = f"urn:oid:{identity.study_instance_uid}"
            if identity.accession_number:
                identifiers.append(
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "ACSN",
                                }
                            ]
                        },
                        "system": accession_identifier_system,
                        "value": identity.accession_number,
                    }
                )
            resource["identifier"] = identifiers
        if kind == "ServiceRequest" and identity.accession_number:
            resource["identifier"] = [
                {"system": accession_identifier_system, "value": identity.accession_number}
            ]
    assert_no_pseudonyms_json(result, identity)
    return result


def assert_no_pseudonyms_json(node: Any, identity: StudyIdentity) -> None:
    pseudonyms = identity.pseudonyms()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str):
            bare = value[8:] if value.startswith("urn:oid:") else value
            if bare in pseudonyms:
                raise ReidentificationError("pseudonym left in the FHIR Bundle")

    visit(node)
