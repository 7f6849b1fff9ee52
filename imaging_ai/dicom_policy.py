"""DICOM value sets and policies the edge and the cloud apply, each written once.

The intake (what the SCP accepts and quarantines), de-identification (what it refuses) and
volume building (what it decodes without a codec) import these; none keeps a copy.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

# ---- transfer syntaxes (PS3.5 Annex A) -----------------------------------------------------

IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"  # retired, still sent by old modalities

# Pixel data as plain little-endian samples: readable without a codec.
UNCOMPRESSED_LITTLE_ENDIAN: Final = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN}
)
# Data sets that cannot be walked element by element as stored: decoded in full first.
NEEDS_FULL_DECODE: Final = frozenset({DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})

# What the edge accepts, stored as sent: the edge never transcodes.
ACCEPTED_TRANSFER_SYNTAXES: Final = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)

# ---- attributes every instance must carry --------------------------------------------------

# Without these an instance cannot be filed into a study and series, nor put back.
REQUIRED_ATTRIBUTES: Final = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)

# ---- burned-in text ------------------------------------------------------------------------

# SOP classes whose pixels often carry burned-in text: secondary capture and ultrasound.
BURNED_IN_RISK_SOP_CLASSES: Final = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
        "1.2.840.10008.5.1.4.1.1.6.1",
        "1.2.840.10008.5.1.4.1.1.6.2",
        "1.2.840.10008.5.1.4.1.1.3.1",
    }
)


class BurnedInRisk(StrEnum):
    """Why an instance's pixels may show text that identifies the patient."""

    ANNOTATION = "burned_in_annotation"  # BurnedInAnnotation (0028,0301) is YES
    RISK_SOP_CLASS = "burned_in_risk_sop_class"


def burned_in_risk(
    sop_class_uid: str, burned_in_annotation: str, allowed_sop_classes: frozenset[str]
) -> BurnedInRisk | None:
    """The burned-in text policy: the reason to keep an instance on-prem, or None.

    `allowed_sop_classes` are the risky classes a site has cleared (e.g. its scanners put no
    text in their secondary captures); they pass whatever they say.
    """
    if sop_class_uid in allowed_sop_classes:
        return None
    if burned_in_annotation.strip().upper() == "YES":
        return BurnedInRisk.ANNOTATION
    if sop_class_uid in BURNED_IN_RISK_SOP_CLASSES:
        return BurnedInRisk.RISK_SOP_CLASS
    return None
