"""The intake journal (SQLite, WAL, synchronous=FULL): instances, study runs, quarantine, audit."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_forwarder.durable_db import open_durable_db

_SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    study_key TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'OPEN',  -- OPEN, CLAIMED, FORWARDED, FAILED, UNROUTED
    run_number INTEGER NOT NULL DEFAULT 1,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    route TEXT,
    pending_revision INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS instance (
    sop_uid TEXT PRIMARY KEY,
    study_key TEXT NOT NULL REFERENCES study (study_key),
    series_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    attrs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instance_study ON instance (study_key, series_uid);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,       -- instance_replaced, instance_conflict_quarantined, ...
    study_key TEXT,
    sender TEXT,               -- the allow-list entry's name: no PHI
    reason TEXT
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    study_key TEXT,
    path TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    last_at: float
    count: int
    attrs: dict[str, str]  # routing attributes of one of its instances


@dataclass(frozen=True)
class StoredInstance:
    """What the journal holds for one SOP Instance UID (the path is a PHI-free spool file)."""

    study_key: str
    study_uid: str
    study_state: str
    path: Path
    sender: str | None


@dataclass(frozen=True)
class AuditRow:
    at: float
    event: str
    study_key: str | None
    sender: str | None
    reason: str | None


@dataclass(frozen=True)
class StudyRow:
    study_key: str
    state: str
    run_number: int
    first_at: float
    last_at: float


class Journal:
    """Every write is one committed transaction: it is on disk before the caller goes on."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_durable_db(path, _SCHEMA)
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(instance)")}
        if "sender" not in columns:  # journals written before senders were named
            self._db.execute("ALTER TABLE instance ADD COLUMN sender TEXT")

    @contextmanager
    def batch(self) -> Iterator[JournalBatch]:
        """One transaction for many stores (group commit): one WAL fsync for all of them.

        Each store runs in `JournalBatch.item()`, a savepoint: one that fails is rolled back
        alone and the others still commit.
        """
        with self._transaction() as db:
            yield JournalBatch(db)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def audit_rows(self) -> list[AuditRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, event, study_key, sender, reason FROM audit ORDER BY id"
            ).fetchall()
        return [AuditRow(float(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    def quarantined(self) -> list[tuple[str | None, str, str]]:
        with self._lock:
            rows = self._db.execute("SELECT study_key, path, reason FROM quarantine ORDER BY id")
            return [(r[0], r[1], r[2]) for r in rows.fetchall()]

    def open_studies(self) -> list[StudyRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT study_key, state, run_number, first_at, last_at FROM study "
                "WHERE state = 'OPEN' ORDER BY first_at"
            ).fetchall()
        return [StudyRow(r[0], r[1], int(r[2]), float(r[3]), float(r[4])) for r in rows]

    def series_of(self, study_key: str) -> list[SeriesSummary]:
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid, MAX(received_at), COUNT(*), MAX(attrs) FROM instance "
                "WHERE study_key = ? GROUP BY series_uid",
                (study_key,),
            ).fetchall()
        return [SeriesSummary(r[0], float(r[1]), int(r[2]), json.loads(r[3])) for r in rows]

    def instance_paths(self, study_key: str) -> dict[str, list[Path]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid, path FROM instance WHERE study_key = ? ORDER BY path",
                (study_key,),
            ).fetchall()
        series: dict[str, list[Path]] = {}
        for series_uid, path in rows:
            series.setdefault(series_uid, []).append(Path(path))
        return series

    def set_unrouted(self, study_key: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE study SET state = 'UNROUTED' WHERE study_key = ?", (study_key,))

    def claim(self, study_key: str, run_number: int, route: str) -> bool:
        """Move a study from OPEN to CLAIMED once; False if someone else got there first."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE study SET state = 'CLAIMED', route = ? "
                "WHERE study_key = ? AND state = 'OPEN' AND run_number = ?",
                (route, study_key, run_number),
            )
            return cursor.rowcount == 1

    def finish(self, study_key: str, run_number: int, state: str, reason: str | None) -> bool:
        """End a claimed run; open the next run at once if late instances came meanwhile."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE study SET state = ?, reason = ? "
                "WHERE study_key = ? AND run_number = ? AND state = 'CLAIMED'",
                (state, reason, study_key, run_number),
            )
            if cursor.rowcount != 1:
                return False
            db.execute(
                "UPDATE study SET state = 'OPEN', run_number = run_number + 1, "
                "pending_revision = 0 WHERE study_key = ? AND pending_revision = 1",
                (study_key,),
            )
            return True

    def reopen_claimed(self) -> int:
        """After a restart, runs that were handed out but never finished go out again."""
        with self._transaction() as db:
            return db.execute("UPDATE study SET state = 'OPEN' WHERE state = 'CLAIMED'").rowcount

    def study(self, study_key: str) -> StudyRow | None:
        with self._lock:
            r = self._db.execute(
                "SELECT study_key, state, run_number, first_at, last_at FROM study "
                "WHERE study_key = ?",
                (study_key,),
            ).fetchone()
        return StudyRow(r[0], r[1], int(r[2]), float(r[3]), float(r[4])) if r else None

    def paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT path FROM instance").fetchall()}

    def sop_uids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT sop_uid FROM instance").fetchall()}


class JournalBatch:
    """The writes of one group commit; each store goes in its own `item()` savepoint."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @contextmanager
    def item(self) -> Iterator[None]:
        self._db.execute("SAVEPOINT store")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO store")
            self._db.execute("RELEASE store")
            raise
        self._db.execute("RELEASE store")

    def study_key_for(self, study_uid: str, now: float) -> str:
        row = self._db.execute(
            "SELECT study_key FROM study WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        if row:
            return str(row[0])
        key = "st-" + uuid.uuid4().hex[:20]
        self._db.execute(
            "INSERT INTO study (study_key, study_uid, first_at, last_at) VALUES (?, ?, ?, ?)",
            (key, study_uid, now, now),
        )
        return key

    def stored(self, sop_uid: str) -> StoredInstance | None:
        row = self._db.execute(
            "SELECT i.study_key, s.study_uid, s.state, i.path, i.sender FROM instance i "
            "JOIN study s ON s.study_key = i.study_key WHERE i.sop_uid = ?",
            (sop_uid,),
        ).fetchone()
        return StoredInstance(row[0], row[1], row[2], Path(row[3]), row[4]) if row else None

    def add_instance(
        self,
        study_key: str,
        sop_uid: str,
        series_uid: str,
        path: Path,
        size: int,
        attrs: dict[str, str],
        sender: str | None,
        now: float,
    ) -> tuple[str, int, bool]:
        """Journal one spooled instance; return the study's (state, run_number) after it, and
        whether it is the study's first instance.

        An instance arriving after its study was forwarded opens a revision run; one arriving
        while the study is being forwarded marks a revision to open when that run ends.
        """
        db = self._db
        first = (
            db.execute(
                "SELECT 1 FROM instance WHERE study_key = ? LIMIT 1", (study_key,)
            ).fetchone()
            is None
        )
        db.execute(
            "INSERT OR REPLACE INTO instance "
            "(sop_uid, study_key, series_uid, path, received_at, size, attrs, sender) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (sop_uid, study_key, series_uid, str(path), now, size, json.dumps(attrs), sender),
        )
        state, run = db.execute(
            "SELECT state, run_number FROM study WHERE study_key = ?", (study_key,)
        ).fetchone()
        if state in ("FORWARDED", "FAILED"):
            state, run = "OPEN", run + 1
            db.execute(
                "UPDATE study SET state = 'OPEN', run_number = ?, reason = NULL "
                "WHERE study_key = ?",
                (run, study_key),
            )
        elif state == "CLAIMED":
            db.execute("UPDATE study SET pending_revision = 1 WHERE study_key = ?", (study_key,))
        elif state == "UNROUTED":
            state = "OPEN"  # a new series may match a rule now
            db.execute("UPDATE study SET state = 'OPEN' WHERE study_key = ?", (study_key,))
        db.execute("UPDATE study SET last_at = ? WHERE study_key = ?", (now, study_key))
        return str(state), int(run), first

    def add_quarantine(self, study_key: str | None, path: Path, reason: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO quarantine (at, study_key, path, reason) VALUES (?, ?, ?, ?)",
            (now, study_key, str(path), reason),
        )

    def audit(
        self, event: str, study_key: str | None, sender: str | None, reason: str | None, now: float
    ) -> None:
        self._db.execute(
            "INSERT INTO audit (at, event, study_key, sender, reason) VALUES (?, ?, ?, ?, ?)",
            (now, event, study_key, sender, reason),
        )
