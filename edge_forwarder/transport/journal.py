"""The forwarder's durable journal (SQLite): per-study timeline, upload parts, deliveries."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge_forwarder.durable_db import open_durable_db, transaction
from imaging_ai.contracts import Priority
from imaging_ai.edge_stage import EdgeStage, check_edge_move


class DeliveryTarget(StrEnum):
    PACS = "pacs"
    EHR = "ehr"
    HL7 = "hl7"  # the ORU^R01 to the interface engine (optional)
    # The notice of a critical finding (FHIR Communication or webhook); sent before the rest.
    CRITICAL = "critical"


class DeliveryState(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD_LETTER = "DEAD_LETTER"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    run_number INTEGER NOT NULL,
    pseudo_study_uid TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT,
    spool_dir TEXT,
    updated_at TEXT NOT NULL,
    model_name TEXT NOT NULL DEFAULT '',  -- one run per model of a study's upload
    shadow INTEGER NOT NULL DEFAULT 0,    -- results kept on the edge, never delivered
    priority TEXT NOT NULL DEFAULT 'ROUTINE',  -- STAT runs go first (journals before it: ALTER)
    UNIQUE (study_key, run_number, model_name)
);
CREATE TABLE IF NOT EXISTS timeline (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    detail TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    object_key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    spool_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    upload_id TEXT,
    parts TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'PENDING'
);
CREATE TABLE IF NOT EXISTS rejected_results (
    message_id TEXT PRIMARY KEY,    -- the SQS message id: a redelivery is recorded once
    run_id TEXT,                    -- NULL when the message named no valid run
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    run_id TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    payload_dir TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (run_id, target)
);
"""


# Journals written before fan-out hold one run per (study, run number) and no model: the
# table is rebuilt once with the model columns and the wider uniqueness.
_RUNS_TABLE = _SCHEMA.split(";")[0]
_REBUILD_RUNS_FOR_FAN_OUT = (
    "ALTER TABLE runs RENAME TO runs_before_fan_out",
    _RUNS_TABLE,
    "INSERT INTO runs (run_id, study_key, run_number, pseudo_study_uid, stage, reason,"
    " spool_dir, updated_at) SELECT run_id, study_key, run_number, pseudo_study_uid, stage,"
    " reason, spool_dir, updated_at FROM runs_before_fan_out",
    "DROP TABLE runs_before_fan_out",
)


# RunRow's fields, in its order: queries name them rather than rely on the table's layout.
_RUN_COLUMNS = (
    "run_id, study_key, run_number, pseudo_study_uid, stage, reason, spool_dir, updated_at,"
    " model_name, shadow, priority"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunRow:
    run_id: str
    study_key: str
    run_number: int
    pseudo_study_uid: str
    stage: EdgeStage
    reason: str | None
    spool_dir: str | None
    updated_at: str
    model_name: str
    shadow: bool
    priority: Priority = Priority.ROUTINE

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> RunRow:
        run_id, study_key, run_number, pseudo, stage, reason, spool_dir, updated_at = row[:8]
        model_name, shadow, priority = row[8:]
        return cls(
            run_id,
            study_key,
            run_number,
            pseudo,
            EdgeStage(stage),
            reason,
            spool_dir,
            updated_at,
            model_name,
            bool(shadow),
            Priority(priority),
        )


@dataclass(frozen=True)
class ObjectRow:
    object_key: str
    run_id: str
    kind: str
    spool_path: str
    sha256: str
    size_bytes: int
    upload_id: str | None
    parts: dict[int, dict[str, str]]
    state: str


@dataclass(frozen=True)
class RejectedResult:
    """A result message refused at the inbound boundary: the edge's dead letter for results."""

    message_id: str
    run_id: str | None
    reason: str
    at: str


@dataclass(frozen=True)
class DeliveryRow:
    run_id: str
    target: DeliveryTarget
    state: DeliveryState
    attempts: int
    last_error: str | None
    payload_dir: str | None
    updated_at: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> DeliveryRow:
        run_id, target, state, attempts, last_error, payload_dir, updated_at = row
        return cls(
            run_id,
            DeliveryTarget(target),
            DeliveryState(state),
            attempts,
            last_error,
            payload_dir,
            updated_at,
        )


class Journal:
    """Every write commits at once, so a kill -9 loses at most the step in flight."""

    def __init__(self, path: Path) -> None:
        self._db = open_durable_db(path, _SCHEMA)
        self._lock = threading.Lock()
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "model_name" not in columns:
            with transaction(self._db, self._lock) as db:
                for statement in _REBUILD_RUNS_FOR_FAN_OUT:
                    db.execute(statement)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "priority" not in columns:  # a journal written before runs had a priority
            self._db.execute("ALTER TABLE runs ADD COLUMN priority TEXT NOT NULL DEFAULT 'ROUTINE'")

    def close(self) -> None:
        self._db.close()

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # ---- runs and timeline ----------------------------------------------------------------

    def open_run(
        self,
        run_id: str,
        study_key: str,
        run_number: int,
        pseudo_study_uid: str,
        stage: EdgeStage = EdgeStage.RECEIVED,
        detail: str | None = None,
        model_name: str = "",
        shadow: bool = False,
        priority: Priority = Priority.ROUTINE,
    ) -> RunRow:
        """Open a run in `stage` (recorded in its timeline); an open run is returned as it is."""
        now = _now()
        with transaction(self._db, self._lock) as db:
            opened = db.execute(
                "INSERT OR IGNORE INTO runs (run_id, study_key, run_number, pseudo_study_uid,"
                " stage, updated_at, model_name, shadow, priority)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    study_key,
                    run_number,
                    pseudo_study_uid,
                    stage.value,
                    now,
                    model_name,
                    int(shadow),
                    priority.value,
                ),
            ).rowcount
            if opened:
                db.execute(
                    "INSERT INTO timeline (run_id, stage, detail, at) VALUES (?, ?, ?, ?)",
                    (run_id, stage.value, detail, now),
                )
        run = self.run(run_id)
        assert run is not None
        return run

    def run(self, run_id: str) -> RunRow | None:
        rows = self._execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))  # noqa: S608
        return RunRow.from_row(rows[0]) if rows else None

    def runs_for(self, study_key: str, run_number: int) -> list[RunRow]:
        """The runs of one upload of a study: one per model it was routed to."""
        rows = self._execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE study_key = ? AND run_number = ?"  # noqa: S608
            " ORDER BY rowid",
            (study_key, run_number),
        )
        return [RunRow.from_row(row) for row in rows]

    def runs(self, *stages: EdgeStage) -> list[RunRow]:
        """Every run, or those in one of `stages`: STAT first, then least recently updated."""
        rows = self._execute(
            f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY priority = ? DESC, updated_at",  # noqa: S608
            (Priority.STAT.value,),
        )
        runs = [RunRow.from_row(row) for row in rows]
        return [r for r in runs if r.stage in stages] if stages else runs

    def runs_of_study(self, pseudo_study_uid: str) -> list[RunRow]:
        rows = self._execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE pseudo_study_uid = ?"  # noqa: S608
            " ORDER BY run_number, rowid",
            (pseudo_study_uid,),
        )
        return [RunRow.from_row(row) for row in rows]

    def revised_run(self, run: RunRow) -> RunRow | None:
        """The same model's latest earlier run of the study: the run `run` revises."""
        earlier = [
            r
            for r in self.runs_of_study(run.pseudo_study_uid)
            # A journal from before fan-out names no model: its runs were the one model's.
            if r.run_number < run.run_number and r.model_name in (run.model_name, "")
        ]
        return earlier[-1] if earlier else None

    def set_spool_dir(self, run_id: str, spool_dir: Path) -> None:
        self._execute("UPDATE runs SET spool_dir = ? WHERE run_id = ?", (str(spool_dir), run_id))

    def advance(
        self, run_id: str, stage: EdgeStage, detail: str | None = None, reason: str | None = None
    ) -> None:
        """Move the run to `stage` and record it in its timeline.

        Raises EdgeStageError where the run's current stage does not allow the move.
        """
        now = _now()
        with transaction(self._db, self._lock) as db:
            (current,) = db.execute("SELECT stage FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            check_edge_move(EdgeStage(current), stage)
            db.execute(
                "UPDATE runs SET stage = ?, reason = ?, updated_at = ? WHERE run_id = ?",
                (stage.value, reason, now, run_id),
            )
            db.execute(
                "INSERT INTO timeline (run_id, stage, detail, at) VALUES (?, ?, ?, ?)",
                (run_id, stage.value, detail or reason, now),
            )

    def note(self, run_id: str, stage: str, detail: str | None = None) -> None:
        """A timeline entry that does not change the run's stage (retries, warnings)."""
        self._execute(
            "INSERT INTO timeline (run_id, stage, detail, at) VALUES (?, ?, ?, ?)",
            (run_id, stage, detail, _now()),
        )

    def timeline(self, run_id: str) -> list[tuple[str, str, str | None]]:
        rows = self._execute(
            "SELECT at, stage, detail FROM timeline WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    def delete_run(self, run_id: str) -> None:
        for table in ("timeline", "objects", "deliveries", "runs"):
            self._execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))  # noqa: S608

    # ---- upload objects -------------------------------------------------------------------

    def add_object(
        self, object_key: str, run_id: str, kind: str, spool_path: Path, sha256: str, size: int
    ) -> None:
        self._execute(
            "INSERT OR REPLACE INTO objects (object_key, run_id, kind, spool_path, sha256,"
            " size_bytes) VALUES (?, ?, ?, ?, ?, ?)",
            (object_key, run_id, kind, str(spool_path), sha256, size),
        )

    def objects(self, run_id: str) -> list[ObjectRow]:
        rows = self._execute(
            "SELECT object_key, run_id, kind, spool_path, sha256, size_bytes, upload_id, parts,"
            " state FROM objects WHERE run_id = ? ORDER BY kind DESC, object_key",
            (run_id,),
        )
        return [
            ObjectRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                int(r[5]),
                r[6],
                {int(k): v for k, v in json.loads(r[7]).items()},
                r[8],
            )
            for r in rows
        ]

    def set_upload_id(self, object_key: str, upload_id: str | None) -> None:
        self._execute(
            "UPDATE objects SET upload_id = ?, parts = '{}' WHERE object_key = ?",
            (upload_id, object_key),
        )

    def record_part(self, object_key: str, number: int, etag: str, checksum: str) -> None:
        with transaction(self._db, self._lock) as db:
            (raw,) = db.execute(
                "SELECT parts FROM objects WHERE object_key = ?", (object_key,)
            ).fetchone()
            parts = json.loads(raw)
            parts[str(number)] = {"etag": etag, "checksum": checksum}
            db.execute(
                "UPDATE objects SET parts = ? WHERE object_key = ?", (json.dumps(parts), object_key)
            )

    def object_done(self, object_key: str) -> None:
        self._execute("UPDATE objects SET state = 'DONE' WHERE object_key = ?", (object_key,))

    # ---- deliveries -----------------------------------------------------------------------

    def set_delivery(
        self,
        run_id: str,
        target: DeliveryTarget,
        state: DeliveryState,
        *,
        last_error: str | None = None,
        payload_dir: Path | None = None,
        attempts_delta: int = 0,
    ) -> None:
        now = _now()
        self._execute(
            "INSERT INTO deliveries (run_id, target, state, attempts, last_error, payload_dir,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, target) DO UPDATE SET"
            " state = excluded.state, attempts = attempts + ?, last_error = excluded.last_error,"
            " payload_dir = COALESCE(excluded.payload_dir, payload_dir),"
            " updated_at = excluded.updated_at",
            (
                run_id,
                DeliveryTarget(target).value,
                DeliveryState(state).value,
                attempts_delta,
                last_error,
                str(payload_dir) if payload_dir else None,
                now,
                attempts_delta,
            ),
        )

    def deliveries(
        self, run_id: str | None = None, state: DeliveryState | None = None
    ) -> list[DeliveryRow]:
        """STAT runs' deliveries first, then least recently updated first."""
        sql = "SELECT d.* FROM deliveries d LEFT JOIN runs r ON r.run_id = d.run_id WHERE 1 = 1"
        args = list[Any]()
        if run_id is not None:
            sql, args = sql + " AND d.run_id = ?", [*args, run_id]
        if state is not None:
            sql, args = sql + " AND d.state = ?", [*args, DeliveryState(state).value]
        rows = self._execute(
            sql + " ORDER BY r.priority = ? DESC, d.updated_at", (*args, Priority.STAT.value)
        )
        return [DeliveryRow.from_row(row) for row in rows]

    # ---- results refused at the inbound boundary (the edge's dead letters for results) -----

    def reject_result(self, message_id: str, run_id: str | None, reason: str) -> None:
        self._execute(
            "INSERT OR IGNORE INTO rejected_results (message_id, run_id, reason, at)"
            " VALUES (?, ?, ?, ?)",
            (message_id, run_id, reason, _now()),
        )

    def rejected_results(self) -> list[RejectedResult]:
        rows = self._execute("SELECT * FROM rejected_results ORDER BY at, message_id")
        return [RejectedResult(*row) for row in rows]
