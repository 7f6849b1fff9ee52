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


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    events: dict[str, float] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    printer: Callable[[str], None] | None = print
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def record(self, stage: str, detail: str = "") -> None:
        with self._changed:
            if stage in self.events:
                return
            self.events[stage] = time.monotonic() - self.started
            self.details[stage] = detail
            self._changed.notify_all()
        if self.printer:
            text = DESCRIPTIONS.get(stage, stage)
            suffix = f"  ({detail})" if detail else ""
            self.printer(f"  {self.events[stage]:7.1f} s  {stage:<17} {text}{suffix}")

    def wait_for(self, stages: tuple[str, ...], timeout_s: float) -> bool:
        """Block until every stage is recorded, or a TERMINAL one is, or the time is up;
        True only when every stage was reached."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not all(s in self.events for s in stages) and not self.ended():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return all(s in self.events for s in stages)

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
