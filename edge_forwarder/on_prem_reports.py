"""The results rendered on-prem after re-identification: the PDF report and the HL7 ORU.

Both carry the patient's identifiers, which exist only here; both read the re-identified SR,
so they say exactly what the SR the PACS receives says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_forwarder.identity import StudyIdentity
from edge_forwarder.oru import OruParties, build_oru
from edge_forwarder.result_objects import ORU_NAME, PDF_REPORT_NAME
from edge_forwarder.transport.errors import PermanentError, ReidentificationError
from edge_forwarder.transport.reidentify import (
    PseudonymScanner,
    assert_no_pseudonyms_dicom,
    pseudonyms_of,
)
from imaging_ai.contracts import KEY_IMAGES_NAME, SR_NAME
from imaging_ai.errors import PipelineError
from imaging_ai.results.pdf_report import build_encapsulated_pdf
from imaging_ai.results.report_content import read_report


class ReportRenderingError(PermanentError):
    """The re-identified SR cannot be rendered as a PDF or an ORU (message names no PHI)."""


@dataclass(frozen=True)
class OnPremReports:
    """Which on-prem renderings this site wants: the PDF (a PACS destination lists it), the
    ORU (an `[hl7]` destination is configured)."""

    pdf: bool
    oru: OruParties | None

    def render(self, folder: Path, identity: StudyIdentity, run_id: str) -> list[str]:
        """Write the wanted renderings of `folder`'s re-identified SR; return their names."""
        sr_path = folder / SR_NAME
        if not sr_path.exists() or not (self.pdf or self.oru):
            return []
        sr = sr_path.read_bytes()
        pseudonyms = pseudonyms_of(identity)
        made = []
        try:
            if self.pdf:
                key_images = folder / KEY_IMAGES_NAME
                pdf = build_encapsulated_pdf(
                    sr, run_id, key_images.read_bytes() if key_images.exists() else None
                )
                assert_no_pseudonyms_dicom(pdf, pseudonyms)
                (folder / PDF_REPORT_NAME).write_bytes(pdf)
                made.append(PDF_REPORT_NAME)
            if self.oru is not None:
                message = build_oru(read_report(sr), identity, run_id, self.oru)
                if PseudonymScanner(pseudonyms).found_in(message):
                    raise ReidentificationError("pseudonym left in the HL7 ORU")
                (folder / ORU_NAME).write_bytes(message.encode("utf-8"))
                made.append(ORU_NAME)
        except PermanentError:
            raise
        except PipelineError as error:
            raise ReportRenderingError(f"on-prem report rendering failed: {error}") from None
        return made
