"""The edge run state: the journal makes only the moves EdgeStage allows."""

from __future__ import annotations

import pytest

from edge_forwarder.transport.journal import Journal
from imaging_ai.edge_stage import (
    EDGE_MOVES,
    TERMINAL_EDGE_STAGES,
    EdgeStage,
    EdgeStageError,
    check_edge_move,
)


def test_every_stage_has_its_moves_and_every_non_terminal_one_may_fail() -> None:
    assert set(EDGE_MOVES) == set(EdgeStage)
    for stage in EdgeStage:
        if stage not in TERMINAL_EDGE_STAGES:
            check_edge_move(stage, EdgeStage.FAILED)
    for stage in TERMINAL_EDGE_STAGES:
        with pytest.raises(EdgeStageError):
            check_edge_move(stage, EdgeStage.FAILED)


def test_the_journal_refuses_a_move_backwards_and_keeps_the_run_as_it_was(
    journal: Journal,
) -> None:
    # Given an uploaded run
    journal.open_run("r1-x", "key", 1, "2.25.1", stage=EdgeStage.UPLOADED)
    # When something tries to move it back to PREPARED, or to DELIVERED before its results
    for stage in (EdgeStage.PREPARED, EdgeStage.DELIVERED):
        with pytest.raises(EdgeStageError):
            journal.advance("r1-x", stage)
    # Then it is still uploaded, with nothing added to its timeline
    run = journal.run("r1-x")
    assert run is not None and run.stage is EdgeStage.UPLOADED
    assert [stage for _, stage, _ in journal.timeline("r1-x")] == [EdgeStage.UPLOADED]


def test_journals_written_before_the_enum_read_back_as_edge_stages(journal: Journal) -> None:
    journal.open_run("r1-y", "key", 1, "2.25.1")
    journal._execute("UPDATE runs SET stage = 'FAILED' WHERE run_id = 'r1-y'")
    run = journal.run("r1-y")
    assert run is not None and run.stage is EdgeStage.FAILED
