"""A study's identity on both sides of de-identification: PHI, it never leaves the edge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudyIdentity:
    """The original identifiers of one study and the pseudonyms that stand for them.

    De-identification returns one per instance (its own series, frame of reference and SOP
    instance UIDs in the maps); the crosswalk vault keeps them and gives back the whole
    study's, which re-identification puts back into the cloud's results.
    """

    pseudo_study_uid: str
    study_instance_uid: str
    pseudo_patient_id: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    accession_number: str
    study_date: str
    study_time: str
    date_shift_days: int
    # pseudonym -> original UID, per level
    series: Mapping[str, str] = field(default_factory=dict)
    frames_of_reference: Mapping[str, str] = field(default_factory=dict)
    instances: Mapping[str, str] = field(default_factory=dict)

    def uid_map(self) -> dict[str, str]:
        """Pseudonymous UID -> original UID, the study's own included."""
        return {
            self.pseudo_study_uid: self.study_instance_uid,
            **self.series,
            **self.frames_of_reference,
            **self.instances,
        }

    def pseudonyms(self) -> set[str]:
        """Every pseudonymous value that must not appear in what goes to PACS or EHR."""
        values = {*self.uid_map(), self.pseudo_patient_id}
        originals = set(self.uid_map().values())
        return {v for v in values if v and v not in originals}
