"""A real PACS files the fallback objects: key images and the PDF report, C-STOREd by the
edge's own SCU to Orthanc, land in the source study beside the CT."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from edge_forwarder.transport.pacs import PacsPeer
from imaging_ai.local.orthanc import SENDER_AE_TITLE, Orthanc
from imaging_ai.results import build_results
from imaging_ai.results.key_images import (
    MULTIFRAME_GRAYSCALE_BYTE_SC,
    key_slice_indices,
    stored_to_hu,
)
from imaging_ai.results.pdf_report import ENCAPSULATED_PDF, build_encapsulated_pdf
from tests.integration.results.conftest import NEEDS_ORTHANC, store_with_dcmtk
from tests.unit.results.sample import make_sample_run

pytestmark = [
    pytest.mark.integration,
    NEEDS_ORTHANC,
]


def _part10(dataset: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_key_images_and_pdf_are_filed_in_the_source_study(pacs: Orthanc, tmp_path: Path) -> None:
    # Given the source CT in the PACS, and the run's key images and PDF report
    run = make_sample_run(tmp_path / "study")
    store_with_dcmtk(pacs, run.paths)
    indices = key_slice_indices(run.labels, run.output)
    pixels = {k: stored_to_hu(pydicom.dcmread(run.paths[k])) for k in indices}
    results = build_results(
        run.headers, run.labels, run.output, run.card, "run-1", key_slices_hu=pixels
    )
    assert results.key_images is not None
    key_images = _part10(results.key_images)
    pdf = build_encapsulated_pdf(_part10(results.sr), "run-1", key_images)

    # When the edge's PACS peer C-STOREs them (one association, its presentation contexts)
    peer = PacsPeer("127.0.0.1", pacs.dicom_port, pacs.ae_title, SENDER_AE_TITLE, 10.0)
    statuses = peer.store([key_images, pdf])

    # Then Orthanc accepts both and files them in the same study, as new series
    assert statuses == [0, 0]
    study_uid = str(run.headers[0].StudyInstanceUID)
    assert len(pacs.studies()) == 1
    by_class: dict[str, list[dict[str, str]]] = {}
    for instance in pacs.study_instances(study_uid):
        tags = instance["Tags"]
        by_class.setdefault(tags["SOPClassUID"], []).append(tags)
    (stored_key,) = by_class[MULTIFRAME_GRAYSCALE_BYTE_SC]
    (stored_pdf,) = by_class[ENCAPSULATED_PDF]
    assert stored_key["Modality"] == "OT" and stored_pdf["Modality"] == "DOC"
    assert stored_key["NumberOfFrames"] == str(len(indices))
    series = {t["SeriesInstanceUID"] for tags in by_class.values() for t in tags}
    assert len(series) == 2 + 1  # CT, key images, PDF
    assert stored_pdf["PatientID"] == run.headers[0].PatientID
