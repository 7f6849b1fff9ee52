"""A PDF report a radiologist can read, wrapped as a DICOM Encapsulated PDF.

Rendered ON-PREM, from the re-identified SR: a printed report without the patient's name,
MRN and accession invites wrong-patient errors, and those identifiers exist only at the site.
Filling them into a PDF the cloud made would mean editing its page content; rendering here,
from the same SR the PACS gets, keeps PHI on-prem and keeps the PDF equal to the SR.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pydicom
from fpdf import FPDF
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from imaging_ai.results import codes
from imaging_ai.results.patient_study import DEIDENTIFICATION_ATTRIBUTES, IDENTITY_ATTRIBUTES
from imaging_ai.results.report_content import ReportContent, format_value, read_report
from imaging_ai.results.uids import explicit_le_file_meta

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PDF_SERIES_NUMBER = 9103
# LOINC 18748-4 "Diagnostic imaging study": the document's title code.
DOCUMENT_TITLE = Code("18748-4", "LN", "Diagnostic imaging study")


def _latin1(text: str) -> str:
    # The PDF core fonts are Latin-1; a name in another script prints with '?' rather than
    # failing the whole report (the DICOM header keeps the exact name).
    return text.encode("latin-1", "replace").decode("latin-1")


def _person(value: object) -> str:
    return str(value).replace("^", ", ", 1).replace("^", " ").strip(", ")


def _date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 else text


def _time(value: str) -> str:
    return f"{value[:2]}:{value[2:4]}" if len(value) >= 4 else value


def _line(pdf: FPDF, height: float, text: str) -> None:
    """A full-width cell, then the next line."""
    pdf.cell(pdf.epw, height, text, new_x="LMARGIN", new_y="NEXT")


def render_pdf(
    sr: Dataset, content: ReportContent, key_frames: Sequence[npt.NDArray[np.uint8]] = ()
) -> bytes:
    """The report pages: who and what, the findings table, the text, the key images."""
    pdf = FPDF(format="A4")
    pdf.set_creator(_latin1(f"{content.model_name} {content.model_version}"))
    pdf.set_title("AI imaging report")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.epw
    pdf.set_font("helvetica", "B", 15)
    pdf.cell(
        width, 9, "AI imaging result - unverified algorithm output", new_x="LMARGIN", new_y="NEXT"
    )
    if content.not_for_clinical_use:
        pdf.set_font("helvetica", "B", 11)
        pdf.set_text_color(180, 0, 0)
        _line(pdf, 7, codes.NOT_FOR_CLINICAL_USE_SHORT)
        pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    pdf.set_font("helvetica", "", 10)
    procedure = content.procedure.meaning if content.procedure else "Imaging study"
    rows = [
        ("Patient", _person(sr.get("PatientName", ""))),
        ("Patient ID", str(sr.get("PatientID", ""))),
        ("Birth date / sex", f"{_date(sr.get('PatientBirthDate'))} / {sr.get('PatientSex', '')}"),
        ("Accession", str(sr.get("AccessionNumber", ""))),
        ("Study", f"{procedure}, {_date(sr.get('StudyDate'))}"),
        ("Algorithm", f"{content.model_name} version {content.model_version}"),
        ("Weights SHA-256", content.weights_sha256 or "not stated"),
        (
            "Reported",
            f"{_date(content.content_date)} {_time(content.content_time)} UTC",
        ),
    ]
    for label, value in rows:
        pdf.set_font("helvetica", "B", 10)
        pdf.cell(38, 6, label)
        pdf.set_font("helvetica", "", 10)
        pdf.multi_cell(width - 38, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font("helvetica", "B", 12)
    _line(pdf, 8, "Findings")
    pdf.set_font("helvetica", "", 10)
    if not content.findings:
        pdf.cell(
            width, 6, "No finding was detected by the algorithm.", new_x="LMARGIN", new_y="NEXT"
        )
    else:
        with pdf.table(col_widths=(30, 30, 30, 40, 40), text_align="LEFT") as table:
            header = table.row()
            for title in ("Finding", "Type", "Site", "Measurement", "Value"):
                header.cell(title)
            for finding in content.findings:
                for number, measurement in enumerate(finding.measurements):
                    row = table.row()
                    first = number == 0
                    row.cell(_latin1(finding.tracking_identifier) if first else "")
                    kind = finding.finding_type.meaning if finding.finding_type else ""
                    row.cell(_latin1(kind) if first else "")
                    site = finding.finding_site.meaning if finding.finding_site else ""
                    row.cell(_latin1(site) if first else "")
                    row.cell(_latin1(measurement.concept.meaning))
                    row.cell(f"{format_value(measurement.value)} {measurement.unit.value}")
    pdf.ln(3)
    pdf.set_font("helvetica", "B", 12)
    _line(pdf, 8, "Report")
    pdf.set_font("helvetica", "", 10)
    pdf.multi_cell(width, 5, _latin1(content.conclusion()), new_x="LMARGIN", new_y="NEXT")
    for number, frame in enumerate(key_frames, start=1):
        if pdf.get_y() > pdf.eph - 80:
            pdf.add_page()
        pdf.ln(3)
        pdf.set_font("helvetica", "B", 10)
        pdf.cell(
            width, 6, f"Key image {number} of {len(key_frames)}", new_x="LMARGIN", new_y="NEXT"
        )
        pdf.image(Image.fromarray(frame, mode="L"), w=min(width, 90))
    return bytes(pdf.output())


def build_encapsulated_pdf(
    sr_part10: bytes,
    run_id: str,
    key_images_part10: bytes | None = None,
    now: datetime | None = None,
) -> bytes:
    """The Encapsulated PDF instance of a re-identified SR, in the SR's (original) study.

    The patient and study attributes are the re-identified SR's; the UIDs derive from it and
    the run, so a re-delivery replaces the same instance.
    """
    now = now or datetime.now(UTC)
    sr = pydicom.dcmread(io.BytesIO(sr_part10))
    content = read_report(sr)
    frames: list[npt.NDArray[np.uint8]] = []
    key_images = None
    if key_images_part10 is not None:
        key_images = pydicom.dcmread(io.BytesIO(key_images_part10))
        pixels = key_images.pixel_array
        frames = list(pixels) if pixels.ndim == 3 else [pixels]
    pdf = render_pdf(sr, content, frames)
    ds = Dataset()
    for keyword in IDENTITY_ATTRIBUTES:
        ds[keyword] = (
            sr[keyword]
            if keyword in sr
            else pydicom.DataElement(
                pydicom.datadict.tag_for_keyword(keyword) or 0,
                pydicom.datadict.dictionary_VR(keyword),
                None,
            )
        )
    for keyword in DEIDENTIFICATION_ATTRIBUTES:
        if keyword in sr:
            ds[keyword] = sr[keyword]
    if "SpecificCharacterSet" in sr:
        ds.SpecificCharacterSet = sr.SpecificCharacterSet
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["pdf-report", run_id, str(sr.SOPInstanceUID)])
    ds.SeriesInstanceUID = generate_uid(
        entropy_srcs=["pdf-report-series", run_id, str(sr.SOPInstanceUID)]
    )
    ds.Modality = "DOC"
    ds.SeriesNumber = PDF_SERIES_NUMBER
    description = f"{content.model_name} PDF report"
    if content.not_for_clinical_use:
        description = f"{content.model_name} PDF - {codes.NOT_FOR_CLINICAL_USE_SHORT}"
    ds.SeriesDescription = description[:64]
    ds.InstanceNumber = 1
    ds.Manufacturer = str(sr.get("Manufacturer", ""))[:64]
    ds.ManufacturerModelName = content.model_name[:64]
    ds.SoftwareVersions = content.model_version[:64]
    ds.ConversionType = "WSD"
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the page prints the patient's identifiers
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = f"AI report: {content.model_name} {content.model_version}"[:64]
    codes.check_code(DOCUMENT_TITLE.scheme_designator, DOCUMENT_TITLE.value, DOCUMENT_TITLE.meaning)
    title = Dataset()
    title.CodeValue, title.CodeMeaning = DOCUMENT_TITLE.value, DOCUMENT_TITLE.meaning
    title.CodingSchemeDesignator = DOCUMENT_TITLE.scheme_designator
    ds.ConceptNameCodeSequence = [title]
    ds.SourceInstanceSequence = []
    for source in (sr, key_images):
        if source is None:
            continue
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceInstanceSequence.append(ref)
    if "ContributingEquipmentSequence" in sr:
        ds.ContributingEquipmentSequence = sr.ContributingEquipmentSequence
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB values are even-length: a trailing NUL pads the PDF (readers stop at %%EOF).
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.file_meta = explicit_le_file_meta(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
