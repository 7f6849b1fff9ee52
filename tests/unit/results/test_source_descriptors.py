"""The SEG, SR and FHIR Bundle copy no source descriptor, whatever the de-id profile kept."""

from __future__ import annotations

import copy
import io
import json

import pydicom

from imaging_ai.results import build_results
from imaging_ai.results.build import RESULT_PATIENT_STUDY_ATTRIBUTES
from tests.unit.results.sample import SampleRun

# Values a site's profile may keep (Clean Descriptors on, patient characteristics retained).
KEPT_DESCRIPTORS = {
    "StudyDescription": "CT CHEST LUNG SCREENING QX31",
    "PatientComments": "ZZCOMMENT PATIENT QX32",
    "AdditionalPatientHistory": "ZZHISTORY QX33",
    "ReasonForVisit": "ZZREASON QX34",
    "PatientWeight": "71.5",
    "Occupation": "ZZOCCUPATION QX35",
}


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_results_copy_only_the_allow_listed_patient_and_study_attributes(
    sample_run: SampleRun,
) -> None:
    # Given de-identified source headers that still carry descriptors and characteristics
    headers = [copy.deepcopy(ds) for ds in sample_run.headers]
    for ds in headers:
        for keyword, value in KEPT_DESCRIPTORS.items():
            setattr(ds, keyword, value)
    # When the results are built
    results = build_results(
        headers, sample_run.labels, sample_run.output, sample_run.card, "run-desc"
    )
    # Then neither the SEG, the SR nor the Bundle carries any of them
    written = [_bytes(results.seg), _bytes(results.sr), json.dumps(results.bundle).encode()]
    for keyword, value in KEPT_DESCRIPTORS.items():
        assert keyword not in results.seg and keyword not in results.sr
        assert not any(value.encode() in blob for blob in written if len(value) > 5), keyword
    # and they still carry the pseudonymous identity re-identification needs
    for ds in (results.seg, results.sr):
        assert ds.PatientID == headers[0].PatientID
        assert ds.StudyInstanceUID == headers[0].StudyInstanceUID
    # and the input headers were not changed
    assert headers[0].StudyDescription == KEPT_DESCRIPTORS["StudyDescription"]
    assert "StudyDescription" not in RESULT_PATIENT_STUDY_ATTRIBUTES
