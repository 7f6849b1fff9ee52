"""A real PACS accepts the results: SR + SEG C-STOREd to Orthanc land in the source study."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imaging_ai.local.orthanc import Orthanc
from imaging_ai.results import ResultObjects, build_results
from tests.integration.results.conftest import DCMTK_STORESCU, NEEDS_ORTHANC, store_with_dcmtk
from tests.unit.results.sample import SampleRun, make_sample_run

pytestmark = [
    pytest.mark.integration,
    NEEDS_ORTHANC,
]


def test_sr_and_seg_arrive_in_the_source_study(pacs: Orthanc, tmp_path: Path) -> None:
    # Given the (pseudonymous) source CT already in the PACS,
    run: SampleRun = make_sample_run(tmp_path / "study")
    store_with_dcmtk(pacs, run.paths)
    results: ResultObjects = build_results(run.headers, run.labels, run.output, run.card, "run-1")
    sr_path, seg_path = tmp_path / "sr.dcm", tmp_path / "seg.dcm"
    results.sr.save_as(sr_path, enforce_file_format=True)
    results.seg.save_as(seg_path, enforce_file_format=True)

    # When the SR and SEG are C-STOREd by the pipeline's AE title,
    store_with_dcmtk(pacs, [sr_path, seg_path])

    # Then Orthanc files them in the same study, as new series beside the CT.
    study_uid = str(run.headers[0].StudyInstanceUID)
    assert len(pacs.studies()) == 1
    instances = pacs.study_instances(study_uid)
    by_modality: dict[str, list[str]] = {}
    for instance in instances:
        tags = instance["Tags"]
        assert tags["StudyInstanceUID"] == study_uid
        assert tags["PatientID"] == run.headers[0].PatientID
        by_modality.setdefault(tags["Modality"], []).append(tags["SOPInstanceUID"])
    assert by_modality["SR"] == [results.sr.SOPInstanceUID]
    assert by_modality["SEG"] == [results.seg.SOPInstanceUID]
    assert len(by_modality["CT"]) == len(run.paths)


def test_store_from_an_unknown_ae_title_is_refused(pacs: Orthanc, tmp_path: Path) -> None:
    # Orthanc binds 0.0.0.0 here; only our AE title from loopback may store.
    run = make_sample_run(tmp_path / "study", nodules=1)
    result = subprocess.run(
        [DCMTK_STORESCU, "-aet", "STRANGER", "-aec", pacs.ae_title, "127.0.0.1",
         str(pacs.dicom_port), str(run.paths[0])],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert b"Calling AE Title Not Recognized" in result.stderr
    assert pacs.studies() == []
