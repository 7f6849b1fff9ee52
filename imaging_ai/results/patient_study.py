"""Which Patient and Study attributes a result object carries from its (pseudonymous) source."""

from __future__ import annotations

from typing import Final

# The (pseudonymous) identity and the study keys re-identification restores. highdicom would
# otherwise copy both IEs whole, so a descriptor, comment or history the profile kept would
# travel into every result.
RESULT_PATIENT_STUDY_ATTRIBUTES: Final = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    }
)
