"""The PDF report: read from the SR, rendered, wrapped as a dciodvfy-clean Encapsulated PDF."""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path

import pydicom
import pytest

from imaging_ai.results import ResultObjects
from imaging_ai.results.build import result_source_headers
from imaging_ai.results.key_images import build_key_images, key_slice_indices, stored_to_hu
from imaging_ai.results.pdf_report import ENCAPSULATED_PDF, build_encapsulated_pdf
from imaging_ai.results.report_content import read_report
from tests.dciodvfy_support import assert_dciodvfy_clean
from tests.unit.results.sample import SampleRun


def _part10(dataset: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def pdf_text(pdf: bytes) -> str:
    """The text drawn on the pages (fpdf2 deflates its content streams)."""
    shown = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, flags=re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            continue  # an image
        shown += [m.decode("latin-1") for m in re.findall(rb"\((.*?)\) Tj", content)]
    return " ".join(shown)


@pytest.fixture(scope="module")
def identified_sr(results: ResultObjects) -> bytes:
    """The SR as the edge has it after re-identification (fake identifiers)."""
    sr = pydicom.dcmread(io.BytesIO(_part10(results.sr)))
    sr.PatientName, sr.PatientID = "DOE^JANE", "MRN-0042"
    sr.AccessionNumber, sr.PatientBirthDate, sr.PatientSex = "ACC-77", "19700101", "F"
    sr.PatientIdentityRemoved = "NO"
    del sr.DeidentificationMethod, sr.DeidentificationMethodCodeSequence
    return _part10(sr)


def test_the_report_content_is_what_the_sr_says(
    results: ResultObjects, sample_run: SampleRun
) -> None:
    content = read_report(_part10(results.sr))
    card = sample_run.card
    assert (content.model_name, content.model_version) == (card.name, card.version)
    assert content.weights_sha256 == card.weights_sha256
    assert [f.tracking_identifier for f in content.findings] == ["Nodule 1", "Nodule 2"]
    volumes = sorted(round(f.volume_mm3, 2) for f in sample_run.output.findings)
    read = sorted(
        m.value for f in content.findings for m in f.measurements if m.unit.value == "mm3"
    )
    assert read == volumes
    assert content.not_for_clinical_use
    assert f"{card.name} version {card.version}" in content.conclusion()


def test_encapsulated_pdf_is_dciodvfy_clean_and_in_the_srs_study(
    identified_sr: bytes, tmp_path: Path
) -> None:
    # When the edge wraps the report of a re-identified SR
    data = build_encapsulated_pdf(identified_sr, "run-1")
    path = tmp_path / "report.dcm"
    path.write_bytes(data)
    # Then dciodvfy finds no error
    assert_dciodvfy_clean(None, path)
    # ... it sits in the SR's study with the SR's patient, and references the SR
    pdf_ds = pydicom.dcmread(path)
    sr = pydicom.dcmread(io.BytesIO(identified_sr))
    assert pdf_ds.SOPClassUID == ENCAPSULATED_PDF and pdf_ds.Modality == "DOC"
    assert pdf_ds.StudyInstanceUID == sr.StudyInstanceUID
    assert (pdf_ds.PatientID, pdf_ds.AccessionNumber) == ("MRN-0042", "ACC-77")
    assert pdf_ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert pdf_ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    # ... and the same run gives the same instance (a re-delivery replaces it)
    again = pydicom.dcmread(io.BytesIO(build_encapsulated_pdf(identified_sr, "run-1")))
    assert again.SOPInstanceUID == pdf_ds.SOPInstanceUID


def test_the_pdf_a_radiologist_reads_names_patient_model_and_measurements(
    identified_sr: bytes, sample_run: SampleRun
) -> None:
    # Given the run's key images, When the PDF report is built with them
    indices = key_slice_indices(sample_run.labels, sample_run.output)
    pixels = {k: stored_to_hu(pydicom.dcmread(sample_run.paths[k])) for k in indices}
    key_images = build_key_images(
        result_source_headers(sample_run.headers),
        pixels,
        sample_run.labels,
        sample_run.output,
        sample_run.card,
        "run-1",
    )
    data = build_encapsulated_pdf(identified_sr, "run-1", _part10(key_images))
    pdf_ds = pydicom.dcmread(io.BytesIO(data))
    pdf = bytes(pdf_ds.EncapsulatedDocument).rstrip(b"\0")
    assert pdf.startswith(b"%PDF-") and pdf.endswith(b"%%EOF\n")
    text = pdf_text(pdf)
    card = sample_run.card
    for expected in ("DOE, JANE", "MRN-0042", "ACC-77", "1970-01-01", "Nodule 1", "Nodule 2"):
        assert expected in text
    assert f"{card.name} version {card.version}" in text
    assert "DEMO AI - NOT FOR CLINICAL USE" in text
    assert "515.62" in text or "296.88" in text
    assert card.name in pdf_ds.DocumentTitle and card.version in pdf_ds.DocumentTitle
    # ... with the key image on its page, and both sources referenced
    assert "Key image 1 of 1" in text and b"/Subtype /Image" in pdf
    assert [r.ReferencedSOPInstanceUID for r in pdf_ds.SourceInstanceSequence][1] == (
        key_images.SOPInstanceUID
    )
