"""Re-identify cloud results (SR, SEG, FHIR Bundle) with the crosswalk; no pseudonym survives."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from edge_forwarder.identity import StudyIdentity
from edge_forwarder.transport.errors import ReidentificationError
from imaging_ai.results.fhir import DICOM_UID_SYSTEM, identifier_search

# A pseudonym counts as present when it appears whole, or when a long enough piece of its
# distinctive part does (a truncated UID in a 16-char SH field, the patient pseudonym's digest
# without its "ANON-" prefix). Digit runs need more characters than letter-and-digit runs
# for the same odds of matching an unrelated value by chance (10^16 vs 32^10).
_DIGIT_WINDOW = 16
_ALNUM_WINDOW = 10
_SHORTEST_PIECE = 8  # shorter runs ("ANON", "2", "25") say nothing about one patient
_RUN = re.compile(r"[0-9A-Za-z]+")
_PATIENT_KEYWORDS = ("PatientName", "PatientID", "AccessionNumber")


class PseudonymScanner:
    """Finds any pseudonym of a study, or a distinctive piece of one, inside a text value."""

    def __init__(self, pseudonyms: Iterable[str]) -> None:
        self.whole = {p.upper() for p in pseudonyms if p}
        self.short: set[str] = set()  # pieces shorter than their window: matched whole
        self.windows: dict[int, set[str]] = {_DIGIT_WINDOW: set(), _ALNUM_WINDOW: set()}
        for pseudonym in self.whole:
            for run in _RUN.findall(pseudonym):
                if len(run) < _SHORTEST_PIECE:
                    continue
                width = _DIGIT_WINDOW if run.isdigit() else _ALNUM_WINDOW
                if len(run) <= width:
                    self.short.add(run)
                    continue
                self.windows[width].update(run[i : i + width] for i in range(len(run) - width + 1))

    def found_in(self, text: str) -> bool:
        upper = text.upper()
        if upper.rstrip("^") in self.whole or upper in self.whole:
            return True
        if any(piece in upper for piece in self.short):
            return True
        for width, windows in self.windows.items():
            if windows and any(
                upper[i : i + width] in windows for i in range(len(upper) - width + 1)
            ):
                return True
        return any(p in upper for p in self.whole if len(p) >= _SHORTEST_PIECE)


def pseudonyms_of(identity: StudyIdentity, cloud_values: Iterable[object] = ()) -> set[str]:
    """The study's pseudonyms, plus what the cloud called the patient and the accession.

    The cloud only ever knew pseudonyms, so whatever its results name the patient or the
    accession (its pseudo patient name and accession included, which the crosswalk does not
    store) must not survive re-identification either. The patient's own values never count.
    """
    originals = {
        *identity.uid_map().values(),
        identity.patient_id,
        identity.patient_name,
        identity.patient_name.rstrip("^"),
        identity.accession_number,
    } - {""}
    values = identity.pseudonyms() | {
        str(v).strip() for v in cloud_values if v is not None and str(v).strip()
    }
    return {v for v in values if v not in originals and v.rstrip("^") not in originals}


def _local_uid(*parts: str) -> str:
    """A new UID derived from the pseudonymous one: stable, so a re-delivery replaces, not adds."""
    return generate_uid(entropy_srcs=["edge-forwarder-reid", *parts])


def _walk(dataset: Dataset) -> Iterator[Dataset]:
    yield dataset
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def reidentify_dicom(
    part10: bytes, identity: StudyIdentity, run_id: str, revises_run_id: str | None = None
) -> bytes:
    """Restore original study/series/FoR/instance UIDs and the patient module in an SR or SEG.

    The result object gets a new SOP Instance UID (and a new series UID when the cloud made
    a new series) so PACS files it into the original study as a new, derived object. A
    revision SR's PredecessorDocumentsSequence names the earlier SR by its cloud UIDs: they
    become the UIDs this edge gave that SR when it delivered run `revises_run_id`.
    """
    dataset = pydicom.dcmread(io.BytesIO(part10))
    pseudonyms = pseudonyms_of(identity, (dataset.get(k) for k in _PATIENT_KEYWORDS))
    mapping = identity.uid_map()
    own_sop = str(dataset.SOPInstanceUID)
    own_series = str(dataset.SeriesInstanceUID)
    # The result's own UIDs are cloud-made: replace them with local ones, stable per run.
    mapping.setdefault(own_sop, _local_uid(run_id, own_sop))
    mapping.setdefault(own_series, _local_uid(run_id, own_series))
    if revises_run_id is not None:
        for series in _predecessor_series(dataset):
            for uid in _predecessor_uids(series):
                mapping.setdefault(uid, _local_uid(revises_run_id, uid))
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
    assert_no_pseudonyms_dicom(data, pseudonyms)
    return data


def _predecessor_series(dataset: Dataset) -> Iterator[Dataset]:
    for study in dataset.get("PredecessorDocumentsSequence", []):
        yield from study.get("ReferencedSeriesSequence", [])


def _predecessor_uids(series: Dataset) -> Iterator[str]:
    """The earlier SR's own series and instance UIDs (cloud-made, like this SR's)."""
    yield str(series.SeriesInstanceUID)
    for sop in series.get("ReferencedSOPSequence", []):
        yield str(sop.ReferencedSOPInstanceUID)


_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def _texts(value: object) -> list[str]:
    if isinstance(value, bytes | bytearray):
        # UN and OB may hide a string element (an unknown private tag): read it as Latin-1.
        return [bytes(value).decode("latin-1")]
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def assert_no_pseudonyms_dicom(part10: bytes, pseudonyms: Iterable[str]) -> None:
    """Refuse a dataset where any value still holds a pseudonym of this study, or a piece of
    one, in any element at any depth (text, UIDs, and binary values other than pixels)."""
    dataset = pydicom.dcmread(io.BytesIO(part10))
    scanner = PseudonymScanner(pseudonyms)
    for item in _walk(dataset):
        for element in item:
            if element.VR == "SQ" or element.value is None or element.tag in _PIXEL_TAGS:
                continue
            if element.VR in _BINARY_VRS and len(element.value) > 65536:
                continue  # bulk data (e.g. an ICC profile), not a place for identifiers
            if any(scanner.found_in(text) for text in _texts(element.value)):
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
    pseudonyms = pseudonyms_of(identity, _cloud_patient_values(bundle))
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
            _create_once(
                entry, "Patient", identifier_search(patient_identifier_system, identity.patient_id)
            )
        if kind == "ImagingStudy":
            identifiers = [
                i for i in resource.get("identifier", []) if i.get("system") == DICOM_UID_SYSTEM
            ] or [{"system": DICOM_UID_SYSTEM}]
            study_uid = f"urn:oid:{identity.study_instance_uid}"
            identifiers[0]["value"] = study_uid
            # One ImagingStudy per study in the EHR, whatever number of runs report on it.
            _create_once(entry, "ImagingStudy", identifier_search(DICOM_UID_SYSTEM, study_uid))
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
    assert_no_pseudonyms_json(result, pseudonyms)
    return result


def _create_once(entry: dict[str, Any], kind: str, search: str) -> None:
    """Make a POST entry a conditional create: the EHR keeps the resource it already has."""
    request = entry.setdefault("request", {"method": "POST", "url": kind})
    if request.get("method") == "POST":
        request["ifNoneExist"] = search


def _cloud_patient_values(bundle: dict[str, Any]) -> list[str]:
    """What the cloud called the patient and the accession: pseudonyms by construction."""
    values: list[str] = []
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if kind in ("Patient", "ServiceRequest", "ImagingStudy"):
            for identifier in resource.get("identifier", []) or []:
                value = identifier.get("value") if isinstance(identifier, dict) else None
                if isinstance(value, str) and not value.startswith("urn:"):
                    values.append(value)
        if kind == "Patient":
            for name in resource.get("name", []) or []:
                if isinstance(name, dict):
                    values.extend(v for v in (name.get("family"), name.get("text")) if v)
                    values.extend(str(g) for g in name.get("given", []) or [])
    return values


def assert_no_pseudonyms_json(node: Any, pseudonyms: Iterable[str]) -> None:
    """Refuse a Bundle where any string, key or value, holds a pseudonym or a piece of one."""
    scanner = PseudonymScanner(pseudonyms)

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for key, v in value.items():
                visit(key)
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str):
            bare = value[8:] if value.startswith("urn:oid:") else value
            if scanner.found_in(bare):
                raise ReidentificationError("pseudonym left in the FHIR Bundle")

    visit(node)
