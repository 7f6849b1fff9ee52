"""A study's live timeline across edge and cloud stages, printed as it happens."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imaging_ai.edge_stage import EdgeStage

# The edge stages a user follows (the forwarder logs each under its value as event name).
EDGE_TIMELINE_STAGES = (
    EdgeStage.RECEIVED,
    EdgeStage.COMPLETE,
    EdgeStage.DEIDENTIFIED,
    EdgeStage.UPLOADED,
    EdgeStage.RESULTS_RECEIVED,
    EdgeStage.DELIVERED_PACS,
    EdgeStage.DELIVERED_EHR,
)
# Recorded when seen, but only where a model runs in shadow mode (not part of every study's road).
SHADOW_STAGES = (EdgeStage.SHADOW_STORED,)
# Where the cloud's part goes; "inferred" comes from the async endpoint, not the state table.
CLOUD_TIMELINE_STEPS = ("preprocessed", "inferred", "reported")
FAILED = "failed"
NOT_ANALYZED = "not_analyzed"
NOT_ROUTED = "not_routed"

# The order a user reads; each stage is recorded once, the first time it is seen.
STAGES: tuple[str, ...] = (
    *EDGE_TIMELINE_STAGES[:4],
    *CLOUD_TIMELINE_STEPS,
    *EDGE_TIMELINE_STAGES[4:],
)

DESCRIPTIONS = {
    EdgeStage.RECEIVED: "first instance stored durably by the edge C-STORE SCP",
    EdgeStage.COMPLETE: "study complete (quiet timer expired), routed to a model",
    EdgeStage.DEIDENTIFIED: "de-identified on the edge, crosswalk kept on-prem",
    EdgeStage.UPLOADED: "encrypted series + manifest (commit marker) in S3",
    "preprocessed": "Lambda built the model-ready volume and invoked the endpoint",
    "inferred": "inference server segmented and measured (async endpoint)",
    "reported": "Lambda wrote SEG + SR + FHIR Bundle, encrypted, told the site",
    EdgeStage.RESULTS_RECEIVED: "edge fetched and decrypted the results",
    EdgeStage.DELIVERED_PACS: "re-identified SR + SEG stored in the PACS",
    EdgeStage.DELIVERED_EHR: "re-identified FHIR Bundle accepted by the EHR",
    EdgeStage.SHADOW_STORED: "shadow-mode model's results kept on the edge, not delivered",
    # Not a stage every study reaches: only a result the model card calls critical.
    EdgeStage.NOTIFIED_CRITICAL: "CRITICAL finding: the site was notified (FHIR Communication)",
    FAILED: "FAILED",
    NOT_ANALYZED: "NOT ANALYZED: outside the model's intended use, no findings delivered",
    NOT_ROUTED: "no routing rule matched: the study stays on site",
}
# Ends of a study's road other than delivery.
TERMINAL = (FAILED, NOT_ANALYZED, NOT_ROUTED)
# A run is over once it reached one of these sets: live results in PACS and EHR, or a shadow
# model's results kept on the edge.
RUN_DELIVERED = (
    frozenset({EdgeStage.DELIVERED_PACS, EdgeStage.DELIVERED_EHR}),
    frozenset({EdgeStage.SHADOW_STORED}),
)


@dataclass(frozen=True)
class RunTurnaround:
    """One run (a study for one model) on its own clock: seconds since the study's first
    instance was stored, per stage reached."""

    run_id: str
    model_name: str
    stages: list[tuple[str, float]]

    def seconds_to(self, stage: str) -> float | None:
        return dict(self.stages).get(stage)


# Where stages recorded without a run go: they belong to the study as a whole.
_STUDY = ""


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    events: dict[str, float] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    # Stages each run of the study reached: a study fans out to one run per model.
    runs: dict[str, set[str]] = field(default_factory=dict)
    # Seconds since the clock started at which each run reached each stage, the study (the
    # edge's opaque study key) and model of each run, and when each study's first instance
    # was stored: the first-C-STORE-to-EHR time of each study, when several share the run.
    run_times: dict[str, dict[str, float]] = field(default_factory=dict)
    run_studies: dict[str, tuple[str, str]] = field(default_factory=dict)
    study_received: dict[str, float] = field(default_factory=dict)
    printer: Callable[[str], None] | None = print
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def start_clock(self) -> float:
        """Time every stage from now (the first send) on; return that instant."""
        self.started = time.monotonic()
        return self.started

    def record(
        self,
        stage: str,
        detail: str = "",
        run_id: str | None = None,
        at: float | None = None,
        study_key: str | None = None,
    ) -> None:
        """Record `stage` for the study (printed the first time) and, given `run_id`, for that
        run; a TERMINAL stage without a run ends the whole study. `at` is the monotonic
        instant it happened, when the report of it came later (a log line read, a table
        polled); `study_key` names the study of a RECEIVED stage."""
        seconds = (time.monotonic() if at is None else at) - self.started
        with self._changed:
            if run_id is not None:
                self.runs.setdefault(run_id, set()).add(stage)
                self.run_times.setdefault(run_id, {}).setdefault(stage, seconds)
            else:
                self.runs.setdefault(_STUDY, set()).add(stage)
            if stage == EdgeStage.RECEIVED and study_key is not None:
                self.study_received.setdefault(study_key, seconds)
            self._changed.notify_all()
            if stage in self.events:
                return
            self.events[stage] = seconds
            self.details[stage] = detail
        if self.printer:
            text = DESCRIPTIONS.get(stage, stage)
            suffix = f"  ({detail})" if detail else ""
            self.printer(f"  {self.events[stage]:7.1f} s  {stage:<17} {text}{suffix}")

    def name_run(self, run_id: str, study_key: str, model_name: str) -> None:
        """Which study (the edge's study key) and model a run is."""
        with self._lock:
            self.run_studies[run_id] = (study_key, model_name)

    def per_run(self) -> list[RunTurnaround]:
        """Each run's stages in seconds since its own study's first instance was stored (the
        C-STORE its turnaround counts from), in the order reached. A run whose study's
        arrival was not seen is left out."""
        with self._lock:
            rows: list[tuple[float, RunTurnaround]] = []
            for run_id, (study_key, model_name) in self.run_studies.items():
                received = self.study_received.get(study_key)
                if received is None:
                    continue
                reached = sorted(self.run_times.get(run_id, {}).items(), key=lambda i: i[1])
                stages = [(stage, round(at - received, 2)) for stage, at in reached]
                turnaround = RunTurnaround(run_id, model_name, [(EdgeStage.RECEIVED, 0.0), *stages])
                rows.append((received, turnaround))
        return [turnaround for _, turnaround in sorted(rows, key=lambda row: row[0])]  # by arrival

    def wait_for(self, stages: tuple[str, ...], timeout_s: float) -> bool:
        """Block until every run of the study is over (delivered or TERMINAL) and every stage
        is recorded, or the whole study ended, or the time is up; True only when every stage
        was reached. One model rejecting the study does not end the wait for another."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._over(stages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return all(s in self.events for s in stages)

    def _over(self, stages: tuple[str, ...]) -> bool:
        if any(stage in TERMINAL for stage in self.runs.get(_STUDY, ())):
            return True
        runs = [reached for run_id, reached in self.runs.items() if run_id != _STUDY]
        if not runs:
            return all(s in self.events for s in stages)
        return all(_run_end(reached) is not None for reached in runs)

    def run_ends(self) -> dict[str, str]:
        """How each run that is over ended: a TERMINAL stage, or its delivery stages."""
        with self._lock:
            ends = {run_id: _run_end(reached) for run_id, reached in self.runs.items()}
        return {run_id: end for run_id, end in ends.items() if run_id != _STUDY and end}

    def runs_ended_at(self) -> float | None:
        """Seconds since the clock started when the last run reached its last stage, once
        every run is over (None before, or with no run)."""
        with self._lock:
            runs = {run_id: r for run_id, r in self.runs.items() if run_id != _STUDY}
            if not runs or any(_run_end(reached) is None for reached in runs.values()):
                return None
            return max((max(t.values()) for t in self.run_times.values() if t), default=None)

    def ended(self) -> str | None:
        """The terminal stage recorded, if any (callers hold no lock: reads one dict)."""
        return next((stage for stage in TERMINAL if stage in self.events), None)

    def durations(self) -> list[tuple[str, float]]:
        """Seconds each stage took since the one recorded before it, in the order they happened."""
        rows: list[tuple[str, float]] = []
        previous = 0.0
        for stage, at in sorted(self.events.items(), key=lambda item: item[1]):
            rows.append((stage, at - previous))
            previous = at
        return rows


def _run_end(reached: set[str]) -> str | None:
    """How a run ended (a TERMINAL stage, or its delivery stages joined by '+'), or None."""
    terminal = next((stage for stage in TERMINAL if stage in reached), None)
    if terminal is not None:
        return terminal
    delivered = next((ends for ends in RUN_DELIVERED if ends <= reached), None)
    return "+".join(sorted(delivered)) if delivered else None
