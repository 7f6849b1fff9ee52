"""The intake as the forwarder's tests play it: completed studies handed in directly."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_forwarder.identity import StudyIdentity
from edge_forwarder.intake import CompletedStudy

# Fake PHI: a study as the crosswalk holds it; tests `dataclasses.replace` what they need.
JANE_DOE = StudyIdentity(
    pseudo_study_uid="2.25.101",
    study_instance_uid="1.2.3.4.1",
    pseudo_patient_id="ANON-TESTPATIENT",
    patient_id="MRN-0042",
    patient_name="DOE^JANE",
    patient_birth_date="19700101",
    patient_sex="F",
    accession_number="ACC-77",
    study_date="20240102",
    study_time="101500",
    date_shift_days=-10,
)


@dataclass
class ListIntake:
    """Stand-in for the intake's completed-study queue: a study is offered until forwarded."""

    ready: list[CompletedStudy] = field(default_factory=list)
    forwarded: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)

    def poll_completed(self) -> list[CompletedStudy]:
        done = set(self.forwarded)
        return [s for s in self.ready if (s.study_key, s.run_number) not in done]

    def mark_forwarded(self, study_key: str, run_number: int) -> None:
        self.forwarded.append((study_key, run_number))

    def mark_failed(self, study_key: str, run_number: int, reason: str) -> None:
        self.failed.append((study_key, run_number, reason))
        self.ready = [
            s for s in self.ready if (s.study_key, s.run_number) != (study_key, run_number)
        ]
