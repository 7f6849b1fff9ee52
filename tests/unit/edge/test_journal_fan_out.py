"""The edge journal keeps one run per model; a journal from before fan-out is carried over."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_forwarder.transport.journal import Journal
from imaging_ai.edge_stage import EdgeStage


def test_a_journal_from_before_fan_out_keeps_its_runs_and_takes_one_run_per_model(
    tmp_path: Path,
) -> None:
    # Given a journal written before fan-out: one run per (study, run number), no model
    path = tmp_path / "forwarder.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE runs (run_id TEXT PRIMARY KEY, study_key TEXT NOT NULL,
        run_number INTEGER NOT NULL, pseudo_study_uid TEXT NOT NULL, stage TEXT NOT NULL,
        reason TEXT, spool_dir TEXT, updated_at TEXT NOT NULL, UNIQUE (study_key, run_number));
        INSERT INTO runs VALUES ('r1-old', 'key-1', 1, '2.25.1', 'delivered', NULL, NULL, 't');"""
    )
    old.commit()
    old.close()
    # When the forwarder opens it and the study's next upload goes to two models
    journal = Journal(path)
    for model in ("lung", "lung-next"):
        journal.open_run(f"r2-{model}", "key-1", 2, "2.25.1", model_name=model)
    # Then the old run is kept as it was, and each model has its own run of upload 2
    (earlier,) = journal.runs_for("key-1", 1)
    assert (earlier.run_id, earlier.stage, earlier.model_name) == (
        "r1-old",
        EdgeStage.DELIVERED,
        "",
    )
    assert [r.model_name for r in journal.runs_for("key-1", 2)] == ["lung", "lung-next"]
    journal.close()
