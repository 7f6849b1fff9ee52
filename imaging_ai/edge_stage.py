"""The edge forwarder's run state: its stages and the moves allowed between them.

The edge's twin of `contracts.Stage`. The forwarder's journal stores it, `edge-forwarder
status` prints it, and the local runtime reads it off the forwarder's log lines (each stage
is logged under its own value as the event name).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from imaging_ai.errors import PipelineError


class EdgeStage(StrEnum):
    # outbound
    RECEIVED = "received"  # the study's run is opened (its first instance landed earlier)
    COMPLETE = "complete"  # the intake called the study complete and routed it
    DEIDENTIFIED = "deidentified"
    PREPARED = "prepared"  # encrypted series + manifest in the outbox
    UPLOADING = "uploading"
    UPLOADED = "uploaded"  # the manifest (commit marker) is in S3
    # inbound
    RESULTS_RECEIVED = "results_received"
    REIDENTIFIED = "reidentified"
    DELIVERED_PACS = "delivered_pacs"
    DELIVERED_EHR = "delivered_ehr"
    DEAD_LETTER_PACS = "dead_letter_pacs"
    DEAD_LETTER_EHR = "dead_letter_ehr"
    DELIVERED_HL7 = "delivered_hl7"  # the ORU^R01 was acknowledged AA
    DEAD_LETTER_HL7 = "dead_letter_hl7"
    NOTIFIED_CRITICAL = "notified_critical"  # the critical-finding notice was accepted
    DEAD_LETTER_CRITICAL = "dead_letter_critical"
    # A shadow-mode model's results, re-identified and kept on the edge: never delivered to
    # the PACS or the EHR (the site is trying the model before go-live).
    SHADOW_STORED = "shadow_stored"
    # terminal
    DELIVERED = "delivered"
    FAILED = "FAILED"  # upper case, as journals written before this enum hold it
    # The cloud found no series within the model's intended use: not an error, nothing to
    # deliver (contracts.Stage.NOT_ANALYZED's twin).
    NOT_ANALYZED = "not_analyzed"


# Stages a run can be in while its results are being handed to PACS and EHR: each target
# succeeds or dead-letters on its own, in either order, and `edge-forwarder retry` sends a
# dead-lettered target again.
_DELIVERING: Final = frozenset(
    {
        EdgeStage.DELIVERED_PACS,
        EdgeStage.DELIVERED_EHR,
        EdgeStage.DEAD_LETTER_PACS,
        EdgeStage.DEAD_LETTER_EHR,
        EdgeStage.DELIVERED_HL7,
        EdgeStage.DEAD_LETTER_HL7,
        EdgeStage.NOTIFIED_CRITICAL,
        EdgeStage.DEAD_LETTER_CRITICAL,
    }
)

# Allowed moves. FAILED is reachable from every stage that is not terminal.
EDGE_MOVES: Final[dict[EdgeStage, frozenset[EdgeStage]]] = {
    EdgeStage.RECEIVED: frozenset({EdgeStage.COMPLETE}),
    EdgeStage.COMPLETE: frozenset({EdgeStage.DEIDENTIFIED}),
    EdgeStage.DEIDENTIFIED: frozenset({EdgeStage.PREPARED}),
    EdgeStage.PREPARED: frozenset({EdgeStage.UPLOADING}),
    EdgeStage.UPLOADING: frozenset({EdgeStage.UPLOADED}),
    EdgeStage.UPLOADED: frozenset({EdgeStage.RESULTS_RECEIVED, EdgeStage.NOT_ANALYZED}),
    EdgeStage.RESULTS_RECEIVED: frozenset({EdgeStage.REIDENTIFIED}),
    EdgeStage.REIDENTIFIED: _DELIVERING | {EdgeStage.SHADOW_STORED},
    **{stage: _DELIVERING | {EdgeStage.DELIVERED} for stage in _DELIVERING},
    EdgeStage.DELIVERED: frozenset(),
    EdgeStage.SHADOW_STORED: frozenset(),
    EdgeStage.NOT_ANALYZED: frozenset(),
    # The cloud may still deliver results for a run it reported FAILED (a dead-letter
    # redrive re-runs it under the same run id).
    EdgeStage.FAILED: frozenset({EdgeStage.RESULTS_RECEIVED}),
}
# Where a run ends; FAILED cannot be entered again from these.
TERMINAL_EDGE_STAGES: Final = frozenset(
    {EdgeStage.DELIVERED, EdgeStage.SHADOW_STORED, EdgeStage.FAILED, EdgeStage.NOT_ANALYZED}
)
# The outbound stages in order, and where a run can be after its study was taken and
# before it was prepared (taken again after a restart).
OUTBOUND_ORDER: Final = (
    EdgeStage.RECEIVED,
    EdgeStage.COMPLETE,
    EdgeStage.DEIDENTIFIED,
    EdgeStage.PREPARED,
    EdgeStage.UPLOADING,
    EdgeStage.UPLOADED,
)
OUTBOUND_UNFINISHED: Final = frozenset(OUTBOUND_ORDER[:3])
AWAITING_UPLOAD: Final = frozenset({EdgeStage.PREPARED, EdgeStage.UPLOADING})


class EdgeStageError(PipelineError):
    """A run was asked to make a move its state does not allow."""


def check_edge_move(current: EdgeStage, target: EdgeStage) -> None:
    """Raise EdgeStageError unless a run in `current` may move to `target`."""
    if target in EDGE_MOVES[current]:
        return
    if target is EdgeStage.FAILED and current not in TERMINAL_EDGE_STAGES:
        return
    raise EdgeStageError(f"an edge run cannot move from {current} to {target}")
