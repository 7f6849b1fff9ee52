"""Which Patient and Study attributes a result object carries from its (pseudonymous) source."""

from __future__ import annotations

from typing import Final

# The (pseudonymous) identity and the study keys re-identification restores: a result carries
# each, empty where its source has none (all Type 2 but the Study Instance UID).
IDENTITY_ATTRIBUTES: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
# How the source was de-identified: carried when the source says so.
DEIDENTIFICATION_ATTRIBUTES: Final = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)
# highdicom would otherwise copy both IEs whole, so a descriptor, comment or history the
# profile kept would travel into every result.
RESULT_PATIENT_STUDY_ATTRIBUTES: Final = frozenset(
    IDENTITY_ATTRIBUTES + DEIDENTIFICATION_ATTRIBUTES
)
