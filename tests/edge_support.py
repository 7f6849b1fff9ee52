"""The intake as the forwarder's tests play it: completed studies handed in directly."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_forwarder.intake import CompletedStudy


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
