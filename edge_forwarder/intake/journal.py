"""The intake journal (SQLite, WAL, synchronous=FULL): instances, study runs, quarantine, audit."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
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
    route TEXT,  -- the models routed to, comma-separated
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


@dataclass(frozen=True)
class DeliveredStudy:
    """A forwarded study whose original instances are still spooled (retention candidates)."""

    study_key: str
    run_number: int
    forwarded_at: float
    instance_count: int
    size_bytes: int


@dataclass(frozen=True)
class SpoolUse:
    """What the spool holds, by whether it may be purged (no PHI: counts and bytes)."""

    delivered_studies: int
    delivered_instances: int
    delivered_bytes: int
    pending_studies: int
    pending_instances: int
    pending_bytes: int
    quarantined: int


# Columns added after the first release: applied to existing journals at open. Studies
# forwarded before forwarded_at existed count from their last instance, so retention sees them.
_MIGRATIONS = (
    "ALTER TABLE study ADD COLUMN forwarded_at REAL",
    "ALTER TABLE instance ADD COLUMN sender TEXT",  # journals written before senders had names
    "UPDATE study SET forwarded_at = last_at WHERE state = 'FORWARDED' AND forwarded_at IS NULL",
    # A re-run asked for by an operator (`edge-forwarder rerun`): the model references
    # (NAME or NAME@VERSION, comma-separated) the next run goes to instead of routing.
    "ALTER TABLE study ADD COLUMN pinned_models TEXT",
)


class RerunRefused(Exception):
    """A re-run cannot be opened; the message says why (no PHI: states and counts only)."""


class Journal:
    """Every write is one committed transaction: it is on disk before the caller goes on."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_durable_db(path, _SCHEMA)
        for statement in _MIGRATIONS:
            try:
                self._db.execute(statement)
            except sqlite3.OperationalError as error:
                if "duplicate column" not in str(error):
                    raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    def claim(self, study_key: str, run_number: int, models: Sequence[str]) -> bool:
        """Move a study from OPEN to CLAIMED once; False if someone else got there first."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE study SET state = 'CLAIMED', route = ? "
                "WHERE study_key = ? AND state = 'OPEN' AND run_number = ?",
                (",".join(models), study_key, run_number),
            )
            return cursor.rowcount == 1

    def finish(self, study_key: str, run_number: int, state: str, reason: str | None) -> bool:
        """End a claimed run; open the next run at once if late instances came meanwhile."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE study SET state = ?, reason = ?, forwarded_at = CASE WHEN ? = 'FORWARDED'"
                " THEN ? ELSE forwarded_at END "
                "WHERE study_key = ? AND run_number = ? AND state = 'CLAIMED'",
                (state, reason, state, time.time(), study_key, run_number),
            )
            if cursor.rowcount != 1:
                return False
            # A pinned re-run is one run: the next one (late instances) is routed again.
            db.execute("UPDATE study SET pinned_models = NULL WHERE study_key = ?", (study_key,))
            db.execute(
                "UPDATE study SET state = 'OPEN', run_number = run_number + 1, "
                "pending_revision = 0 WHERE study_key = ? AND pending_revision = 1",
                (study_key,),
            )
            return True

    def request_rerun(self, study_key: str, model_references: str) -> int:
        """Open the next run of a forwarded (or failed) study whose originals are still
        spooled, pinned to `model_references`; return its run number.

        The intake hands it out like any completed study (its quiet timer has long expired),
        to the pinned models only. Refused while the study is open or being forwarded, and
        once retention has purged its originals.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, run_number FROM study WHERE study_key = ?", (study_key,)
            ).fetchone()
            if row is None:
                raise RerunRefused("the spool journal has no such study")
            state, run_number = str(row[0]), int(row[1])
            if state not in ("FORWARDED", "FAILED"):
                raise RerunRefused(f"the study is {state}: wait until its run has ended")
            (spooled,) = db.execute(
                "SELECT COUNT(*) FROM instance WHERE study_key = ?", (study_key,)
            ).fetchone()
            if not spooled:
                raise RerunRefused(
                    "retention has purged the study's originals: send it again from the PACS"
                )
            db.execute(
                "UPDATE study SET state = 'OPEN', run_number = ?, reason = NULL, "
                "pinned_models = ? WHERE study_key = ?",
                (run_number + 1, model_references, study_key),
            )
            return run_number + 1

    def pinned_models(self, study_key: str) -> list[str]:
        """The model references a re-run is pinned to; empty for a routed run."""
        with self._lock:
            row = self._db.execute(
                "SELECT pinned_models FROM study WHERE study_key = ?", (study_key,)
            ).fetchone()
        return [ref for ref in (row[0] or "").split(",") if ref] if row else []

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

    # ---- retention ------------------------------------------------------------------------

    def delivered_studies(self) -> list[DeliveredStudy]:
        """Forwarded studies with spooled instances, oldest forwarded first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.study_key, s.run_number, s.forwarded_at, COUNT(*), SUM(i.size) "
                "FROM study s JOIN instance i ON i.study_key = s.study_key "
                "WHERE s.state = 'FORWARDED' AND s.forwarded_at IS NOT NULL "
                "GROUP BY s.study_key ORDER BY s.forwarded_at, s.study_key"
            ).fetchall()
        return [DeliveredStudy(r[0], int(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in rows]

    def release_delivered(self, study_key: str, forwarded_at: float) -> list[Path]:
        """Forget the instances of a study that is still forwarded as of `forwarded_at`;
        return their paths for the caller to delete. Empty when the study changed meanwhile
        (a late instance reopened it): an undelivered study is never released."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT 1 FROM study WHERE study_key = ? AND state = 'FORWARDED' "
                "AND forwarded_at = ?",
                (study_key, forwarded_at),
            ).fetchone()
            if row is None:
                return []
            paths = [
                Path(r[0])
                for r in db.execute(
                    "SELECT path FROM instance WHERE study_key = ?", (study_key,)
                ).fetchall()
            ]
            db.execute("DELETE FROM instance WHERE study_key = ?", (study_key,))
            return paths

    def release_quarantined(self, before: float) -> list[tuple[Path, str | None]]:
        """Forget quarantine entries older than `before`; return (path, study_key) of each
        file no newer entry still names."""
        with self._transaction() as db:
            old = db.execute(
                "SELECT id, path, study_key FROM quarantine WHERE at < ?", (before,)
            ).fetchall()
            db.execute("DELETE FROM quarantine WHERE at < ?", (before,))
            kept = {r[0] for r in db.execute("SELECT path FROM quarantine").fetchall()}
        return [(Path(path), key) for _, path, key in old if path not in kept]

    def spool_use(self) -> SpoolUse:
        with self._lock:
            groups = dict.fromkeys(("delivered", "pending"), (0, 0, 0))
            for state, studies, instances, size in self._db.execute(
                "SELECT CASE WHEN s.state = 'FORWARDED' THEN 'delivered' ELSE 'pending' END AS g,"
                " COUNT(DISTINCT s.study_key), COUNT(*), COALESCE(SUM(i.size), 0) "
                "FROM study s JOIN instance i ON i.study_key = s.study_key GROUP BY g"
            ).fetchall():
                groups[state] = (int(studies), int(instances), int(size))
            (quarantined,) = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()
        return SpoolUse(*groups["delivered"], *groups["pending"], int(quarantined))

    # ---- single writes (tools and tests; the SCP writes through `batch`) -------------------

    def study_key_for(self, study_uid: str, now: float) -> str:
        with self.batch() as batch:
            return batch.study_key_for(study_uid, now)

    def add_instance(
        self,
        study_key: str,
        sop_uid: str,
        series_uid: str,
        path: Path,
        size: int,
        attrs: dict[str, str],
        now: float,
        sender: str | None = None,
    ) -> tuple[str, int, bool]:
        with self.batch() as batch:
            return batch.add_instance(
                study_key, sop_uid, series_uid, path, size, attrs, sender, now
            )

    def add_quarantine(self, study_key: str | None, path: Path, reason: str, now: float) -> None:
        with self.batch() as batch:
            batch.add_quarantine(study_key, path, reason, now)


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
