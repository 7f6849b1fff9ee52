"""The on-prem crosswalk vault: pseudonym to original identifiers, encrypted at rest, audited."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_forwarder.deid import DeidResult
from edge_forwarder.durable_db import open_durable_db, transaction
from edge_forwarder.identity import StudyIdentity
from imaging_ai.errors import PipelineError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    pseudo_study_uid TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    pseudo_patient_id TEXT NOT NULL,
    date_shift_days INTEGER NOT NULL,
    sealed BLOB NOT NULL            -- AES-GCM of the study's original identifiers (JSON)
);
CREATE TABLE IF NOT EXISTS uid_map (
    pseudo_uid TEXT PRIMARY KEY,
    level TEXT NOT NULL,            -- series | instance | frame_of_reference
    pseudo_study_uid TEXT NOT NULL,
    sealed BLOB NOT NULL            -- AES-GCM of the original UID
);
CREATE INDEX IF NOT EXISTS uid_map_study ON uid_map (pseudo_study_uid, level);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    site TEXT NOT NULL,
    pseudo_study_uid TEXT NOT NULL,
    pseudo_sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    table_edition TEXT NOT NULL,
    method_codes TEXT NOT NULL
);
"""


# The study-level originals, sealed together as one JSON object per study.
_SEALED_STUDY_FIELDS = (
    "study_instance_uid",
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "study_date",
    "study_time",
)


class CrosswalkError(PipelineError):
    """The vault cannot be opened or read (wrong key, tampered row)."""


class CrosswalkVault:
    """SQLite (WAL) vault whose identifying values are AES-256-GCM sealed under `key`.

    Pseudonyms are stored in clear (they are what the cloud knows already); every original
    value is sealed with the row's pseudonym as associated data, so a row copied onto
    another pseudonym does not open.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) != 32:
            raise CrosswalkError("crosswalk key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self._lock = threading.Lock()
        self._db = open_durable_db(path, _SCHEMA, private=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _seal(self, value: bytes, aad: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, value, aad.encode("ascii"))

    def _open(self, sealed: bytes, aad: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], aad.encode("ascii"))
        except Exception as exc:  # InvalidTag: wrong key or a row moved or altered
            raise CrosswalkError("crosswalk row does not decrypt under this key") from exc

    def record(self, site: str, result: DeidResult) -> None:
        """Keep the mapping of one de-identified instance (idempotent) and audit the event."""
        identity = result.identity
        study = {name: getattr(identity, name) for name in _SEALED_STUDY_FIELDS}
        uids = [
            (level, pseudo_uid, original_uid)
            for level, mapping in (
                ("series", identity.series),
                ("instance", identity.instances),
                ("frame_of_reference", identity.frames_of_reference),
            )
            for pseudo_uid, original_uid in mapping.items()
        ]
        with transaction(self._db, self._lock) as db:
            db.execute(
                "INSERT OR IGNORE INTO study VALUES (?, ?, ?, ?, ?)",
                (
                    identity.pseudo_study_uid,
                    site,
                    identity.pseudo_patient_id,
                    identity.date_shift_days,
                    self._seal(json.dumps(study).encode(), identity.pseudo_study_uid),
                ),
            )
            for level, pseudo_uid, original_uid in uids:
                db.execute(
                    "INSERT OR IGNORE INTO uid_map VALUES (?, ?, ?, ?)",
                    (
                        pseudo_uid,
                        level,
                        identity.pseudo_study_uid,
                        self._seal(original_uid.encode(), pseudo_uid),
                    ),
                )
            db.execute(
                "INSERT INTO audit (at, event, site, pseudo_study_uid, "
                "pseudo_sop_instance_uid, sop_class_uid, table_edition, method_codes) "
                "VALUES (?, 'DEIDENTIFIED', ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    site,
                    identity.pseudo_study_uid,
                    result.pseudo.sop_instance_uid,
                    result.sop_class_uid,
                    result.table_edition,
                    ",".join(result.method_codes),
                ),
            )

    def study_by_pseudo(self, pseudo_study_uid: str) -> StudyIdentity | None:
        with self._lock:
            row = self._db.execute(
                "SELECT site, pseudo_patient_id, date_shift_days, sealed FROM study "
                "WHERE pseudo_study_uid = ?",
                (pseudo_study_uid,),
            ).fetchone()
            if row is None:
                return None
            mapped = self._db.execute(
                "SELECT level, pseudo_uid, sealed FROM uid_map WHERE pseudo_study_uid = ?",
                (pseudo_study_uid,),
            ).fetchall()
        _site, pseudo_patient_id, shift, sealed = row
        study = json.loads(self._open(sealed, pseudo_study_uid))
        levels: dict[str, dict[str, str]] = {"series": {}, "frame_of_reference": {}, "instance": {}}
        for level, pseudo_uid, sealed_uid in mapped:
            levels[level][pseudo_uid] = self._open(sealed_uid, pseudo_uid).decode()
        return StudyIdentity(
            pseudo_study_uid=pseudo_study_uid,
            pseudo_patient_id=pseudo_patient_id,
            date_shift_days=int(shift),
            series=levels["series"],
            frames_of_reference=levels["frame_of_reference"],
            instances=levels["instance"],
            **study,
        )

    def audit_events(self, pseudo_study_uid: str) -> list[dict[str, object]]:
        """The de-identification audit trail of a study (no PHI in it)."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT at, event, site, pseudo_sop_instance_uid, sop_class_uid, table_edition, "
                "method_codes FROM audit WHERE pseudo_study_uid = ? ORDER BY id",
                (pseudo_study_uid,),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def export_midi_b(self, out_dir: Path) -> None:
        """Write MIDI-B scoring inputs: uid_mapping.csv and patid_mapping.csv (id_old,id_new).

        The files hold PHI: they are for a local evaluation run, written with mode 0600.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            studies = self._db.execute(
                "SELECT pseudo_study_uid, pseudo_patient_id, sealed FROM study"
            ).fetchall()
            mapped = self._db.execute("SELECT pseudo_uid, sealed FROM uid_map").fetchall()
        uid_rows: list[tuple[str, str]] = []
        patient_rows: dict[str, str] = {}
        for pseudo_study_uid, pseudo_patient_id, sealed in studies:
            study = json.loads(self._open(sealed, pseudo_study_uid))
            uid_rows.append((study["study_instance_uid"], pseudo_study_uid))
            patient_rows[study["patient_id"]] = pseudo_patient_id
        for pseudo_uid, sealed_uid in mapped:
            uid_rows.append((self._open(sealed_uid, pseudo_uid).decode(), pseudo_uid))
        for name, rows in (
            ("uid_mapping.csv", sorted(set(uid_rows))),
            ("patid_mapping.csv", sorted(patient_rows.items())),
        ):
            path = out_dir / name
            with open(path, "w", newline="", encoding="utf-8") as handle:
                os.chmod(path, 0o600)
                writer = csv.writer(handle)
                writer.writerow(["id_old", "id_new"])
                writer.writerows(rows)
