"""The result objects a PACS destination can be configured to receive, and their file names."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from imaging_ai.contracts import KEY_IMAGES_NAME, SEG_NAME, SR_NAME

# Rendered on-prem after re-identification (never made or seen by the cloud).
PDF_REPORT_NAME: Final = "report.pdf.dcm"
ORU_NAME: Final = "report.oru.hl7"


class ResultObject(StrEnum):
    SR = "sr"
    SEG = "seg"
    KEY_IMAGES = "key_images"  # burned-in Secondary Capture, for viewers without SR/SEG
    PDF = "pdf"  # Encapsulated PDF report


FILE_NAMES: Final[dict[ResultObject, str]] = {
    ResultObject.SR: SR_NAME,
    ResultObject.SEG: SEG_NAME,
    ResultObject.KEY_IMAGES: KEY_IMAGES_NAME,
    ResultObject.PDF: PDF_REPORT_NAME,
}
# What a destination gets unless its config says otherwise: the standard objects.
DEFAULT_PACS_OBJECTS: Final = (ResultObject.SR, ResultObject.SEG)
# The order objects are sent in (one association per destination).
SEND_ORDER: Final = (ResultObject.SR, ResultObject.SEG, ResultObject.KEY_IMAGES, ResultObject.PDF)
