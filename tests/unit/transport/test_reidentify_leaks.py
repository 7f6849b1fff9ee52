"""Re-identification refuses any output still holding a pseudonym, whole or in part, anywhere."""

from __future__ import annotations

import io
from dataclasses import replace

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from edge_forwarder.identity import StudyIdentity
from edge_forwarder.transport.errors import ReidentificationError
from edge_forwarder.transport.reidentify import reidentify_bundle, reidentify_dicom
from tests.edge_support import JANE_DOE

PSEUDO_STUDY = "2.25.219873487120938471209384712093847120"
PSEUDO_SERIES = "2.25.118273645091827364509182736450918273"
PSEUDO_PATIENT = "ANON-K7QXM2ZP4RTA9B3C"
# The hospital's own UIDs may be 2.25 UUID-derived too: they must never look like a leak.
ORIGINAL_STUDY = "2.25.330012345678901234567890123456789012"
ORIGINAL_SERIES = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _identity() -> StudyIdentity:
    # As the crosswalk gives it back: no pseudo patient name, no pseudo accession stored.
    return replace(
        JANE_DOE,
        pseudo_study_uid=PSEUDO_STUDY,
        study_instance_uid=ORIGINAL_STUDY,
        pseudo_patient_id=PSEUDO_PATIENT,
        patient_id="MRN0042",
        accession_number="ACC-REAL-1",
        study_date="",
        study_time="",
        date_shift_days=0,
        series={PSEUDO_SERIES: ORIGINAL_SERIES},
    )


def _result(mutate: object = None) -> bytes:
    """An SR as the cloud writes it: pseudonymous patient, study and evidence references."""
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_3D_SR
    ds.SOPInstanceUID = "2.25.99887766554433221100998877665544332211"
    ds.SeriesInstanceUID = "2.25.11223344556677889900112233445566778899"
    ds.StudyInstanceUID = PSEUDO_STUDY
    ds.PatientName = PSEUDO_PATIENT + "^"
    ds.PatientID = PSEUDO_PATIENT
    ds.AccessionNumber = "PSACC77310"  # whatever the cloud called the accession
    ds.Modality = "SR"
    evidence = Dataset()
    evidence.StudyInstanceUID = PSEUDO_STUDY
    series = Dataset()
    series.SeriesInstanceUID = PSEUDO_SERIES
    evidence.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    if callable(mutate):
        mutate(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_clean_result_is_reidentified() -> None:
    # Given an SR holding only whole, mapped pseudonyms
    # When it is re-identified
    out = pydicom.dcmread(io.BytesIO(reidentify_dicom(_result(), _identity(), "r1-abc")))
    # Then it carries the patient's own identifiers and references
    assert (out.PatientID, out.AccessionNumber, out.StudyInstanceUID) == (
        "MRN0042",
        "ACC-REAL-1",
        ORIGINAL_STUDY,
    )
    evidence = out.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == ORIGINAL_SERIES


def _text_item(text: str) -> Dataset:
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = text
    return item


@pytest.mark.parametrize(
    ("attack", "mutate"),
    [
        (
            "pseudo study UID truncated into a 16-char SH field",
            lambda ds: setattr(ds, "StudyID", PSEUDO_STUDY[5:21]),
        ),
        (
            "patient pseudonym's digest without its ANON- prefix, in nested free text",
            lambda ds: setattr(
                ds, "ContentSequence", Sequence([_text_item("see K7QXM2ZP4RTA9B3C prior")])
            ),
        ),
        (
            "pseudo patient name in a nested sequence the patient module rewrite misses",
            lambda ds: (
                setattr(
                    ds,
                    "ReferencedPatientSequence",
                    Sequence([Dataset()]),
                )
                or setattr(ds.ReferencedPatientSequence[0], "PatientName", PSEUDO_PATIENT + "^")
            ),
        ),
        (
            "the cloud's accession pseudonym in the request attributes",
            lambda ds: setattr(
                ds.CurrentRequestedProcedureEvidenceSequence[0], "AccessionNumber", "PSACC77310"
            ),
        ),
        (
            "pseudo series UID hidden in a private OB element",
            lambda ds: ds.add_new(0x00091010, "OB", f"ref={PSEUDO_SERIES}".encode()),
        ),
        (
            "lower-cased patient pseudonym inside a description",
            lambda ds: setattr(ds, "SeriesDescription", f"AI for {PSEUDO_PATIENT.lower()}"),
        ),
    ],
)
def test_output_with_a_pseudonym_or_a_piece_of_one_is_refused(attack: str, mutate: object) -> None:
    # Given a result where the cloud (or a bug) left a pseudonym where re-id does not look
    tampered = _result(mutate)
    # When it is re-identified, Then it is refused; the error names the element, not the value
    with pytest.raises(ReidentificationError) as caught:
        reidentify_dicom(tampered, _identity(), "r1-abc")
    assert "pseudonym left in" in str(caught.value)
    assert PSEUDO_PATIENT not in str(caught.value) and PSEUDO_STUDY not in str(caught.value)


def _bundle(note: str) -> dict[str, object]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:pseudo", "value": PSEUDO_PATIENT}],
                    "name": [{"family": "PSEUDONYM-FAMILY7", "given": ["XQ"]}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "note": [{"text": note}],
                }
            },
        ],
    }


def test_bundle_clean_passes_and_cloud_patient_name_is_replaced() -> None:
    out = reidentify_bundle(
        _bundle("Nodule 6 mm, right upper lobe"),
        _identity(),
        patient_identifier_system="urn:mrn",
        accession_identifier_system="urn:acc",
    )
    patient = out["entry"][0]["resource"]
    assert patient["name"] == [{"family": "DOE", "given": ["JANE"]}]
    assert patient["identifier"][0]["value"] == "MRN0042"


@pytest.mark.parametrize(
    "note",
    [
        f"Compared with study {PSEUDO_STUDY[:30]}",  # a truncated pseudo study UID
        "Patient K7QXM2ZP4RTA follow-up",  # part of the patient pseudonym
        "Name on request: PSEUDONYM-FAMILY7",  # the cloud's pseudo patient name, elsewhere
    ],
)
def test_bundle_with_a_piece_of_a_pseudonym_is_refused(note: str) -> None:
    with pytest.raises(ReidentificationError, match="pseudonym left in the FHIR Bundle"):
        reidentify_bundle(
            _bundle(note),
            _identity(),
            patient_identifier_system="urn:mrn",
            accession_identifier_system="urn:acc",
        )


def test_patient_and_imaging_study_become_conditional_creates_on_the_hospitals_identifiers() -> (
    None
):
    # Given the cloud's Bundle with a pseudonymous patient and study
    bundle = _bundle("no finding")
    bundle["entry"].append(  # type: ignore[attr-defined]
        {
            "resource": {
                "resourceType": "ImagingStudy",
                "status": "available",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{PSEUDO_STUDY}"}],
            },
            "request": {"method": "POST", "url": "ImagingStudy"},
        }
    )
    # When the edge re-identifies it
    out = reidentify_bundle(
        bundle,
        _identity(),
        patient_identifier_system="urn:mrn",
        accession_identifier_system="urn:acc",
    )
    # Then the EHR is asked to keep the Patient it has for the MRN, and the ImagingStudy it
    # has for the original Study Instance UID
    requests = {e["resource"]["resourceType"]: e.get("request", {}) for e in out["entry"]}
    assert requests["Patient"]["ifNoneExist"] == "identifier=urn:mrn|MRN0042"
    assert requests["ImagingStudy"]["ifNoneExist"] == (
        f"identifier=urn:dicom:uid|urn:oid:{ORIGINAL_STUDY}"
    )
    assert "ifNoneExist" not in requests["Observation"]
