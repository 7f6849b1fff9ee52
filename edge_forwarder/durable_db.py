"""The forwarder's SQLite stores (intake journal, crosswalk, transport journal) opened one way."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_durable_db(path: Path, schema: str, private: bool = False) -> sqlite3.Connection:
    """Autocommit connection in WAL mode with synchronous=FULL, shared across threads.

    FULL fsyncs the WAL at every commit, so what was acknowledged (an instance, a pseudonym,
    an uploaded part) survives a power cut, not only a process crash. `private` makes the file
    readable by its owner only (the crosswalk). Callers serialise access with their own lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    if private:
        os.chmod(path, 0o600)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One write transaction under the caller's lock: committed whole, or rolled back."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
