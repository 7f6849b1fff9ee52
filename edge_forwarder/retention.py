"""Retention of identified originals on the edge: purged after delivery, first when disk is low.

Once a study has been forwarded (its manifest committed in S3), its original instances in the
spool are PHI the edge no longer needs: the PACS keeps the originals, the crosswalk keeps what
re-identification needs. They go `delivered_days` after forwarding, and quarantined instances
`quarantine_days` after they were quarantined. When free space in the spool falls below
`low_disk_free_bytes`, forwarded studies go at once, oldest forwarded first, until there is
room again. A study not yet forwarded (open, being forwarded, failed, or reopened by a late
instance) is never touched. Each purge writes a FHIR AuditEvent (DCM 110105, action D).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_forwarder.intake.journal import DeliveredStudy
from edge_forwarder.intake.journal import Journal as IntakeJournal
from edge_forwarder.observability import AuditTrail, log_event

DAY_S = 86400.0


class RetentionSettingsLike(Protocol):
    """The config's [retention] section, as far as retention reads it."""

    @property
    def delivered_days(self) -> float: ...
    @property
    def quarantine_days(self) -> float: ...
    @property
    def low_disk_free_bytes(self) -> int: ...
    @property
    def check_interval_s(self) -> float: ...


@dataclass(frozen=True)
class RetentionPolicy:
    delivered_days: float = 7.0
    quarantine_days: float = 7.0
    low_disk_free_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class PurgeReport:
    """What one pass deleted (counts only)."""

    studies: int = 0
    instances: int = 0
    bytes_freed: int = 0
    quarantined: int = 0


class Retention:
    """One pass (`purge`) over the intake journal and spool; `RetentionLoop` repeats it.

    Parameters
    ----------
    journal
        The intake journal: which studies are forwarded, when, and their instance files.
    spool_root
        The spool folder; every file deleted must resolve inside it.
    pseudo_study_uid
        (study_key, run_number) -> the pseudo study UID the audit row names, or None.
    free_bytes
        Free space of the spool's file system (injectable for tests; default statvfs).
    """

    def __init__(
        self,
        journal: IntakeJournal,
        spool_root: Path,
        policy: RetentionPolicy,
        audit: AuditTrail,
        pseudo_study_uid: Callable[[str, int], str | None],
        free_bytes: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.spool_root = spool_root.resolve()
        self.policy = policy
        self.audit = audit
        self.pseudo_study_uid = pseudo_study_uid
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.spool_root).free)
        self.clock = clock

    def purge(self) -> PurgeReport:
        now = self.clock()
        studies = instances = freed = 0
        expired_before = now - self.policy.delivered_days * DAY_S
        low_disk = self.free_bytes() < self.policy.low_disk_free_bytes
        for study in self.journal.delivered_studies():
            if study.forwarded_at < expired_before:
                reason = "retention"
            elif low_disk:
                reason = "low_disk"
            else:
                # Oldest first: every later study is younger still, and disk is fine.
                break
            count, size = self._purge_study(study, reason)
            studies, instances, freed = studies + (count > 0), instances + count, freed + size
            if reason == "low_disk":
                low_disk = self.free_bytes() < self.policy.low_disk_free_bytes
        quarantined = self._purge_quarantine(now - self.policy.quarantine_days * DAY_S)
        if low_disk:
            # Nothing forwarded is left to free: intake will refuse before the disk fills.
            log_event("spool_disk_low", logging.WARNING, stage="retention", count=studies)
        return PurgeReport(studies, instances, freed, quarantined)

    def _purge_study(self, study: DeliveredStudy, reason: str) -> tuple[int, int]:
        paths = self.journal.release_delivered(study.study_key, study.forwarded_at)
        if not paths:
            return 0, 0
        freed = sum(self._delete(path, written_before=study.forwarded_at) for path in paths)
        # The study's (empty, opaquely named) folder stays: removing it could race a late
        # instance's write into it.
        self.audit.record(
            "purge",
            pseudo_study_uid=self.pseudo_study_uid(study.study_key, study.run_number),
            study_key=study.study_key,
            detail=f"reason={reason} instances={len(paths)} bytes={freed}",
        )
        log_event(
            "purged",
            stage="retention",
            study_key=study.study_key,
            reason=reason,
            count=len(paths),
            bytes=freed,
        )
        return len(paths), freed

    def _purge_quarantine(self, before: float) -> int:
        released = self.journal.release_quarantined(before)
        for path, study_key in released:
            freed = self._delete(path, written_before=before)
            self.audit.record(
                "purge",
                pseudo_study_uid=None,
                study_key=study_key or "quarantine",
                detail=f"reason=quarantine_retention instances=1 bytes={freed}",
            )
        if released:
            log_event("purged", stage="retention", reason="quarantine", count=len(released))
        return len(released)

    def _delete(self, path: Path, written_before: float) -> int:
        """Delete one spooled file; the bytes freed (0 if it was not ours to delete).

        A path from the journal is resolved and must lie inside the spool: a tampered or
        stale row must not make retention delete anything else. A file written after the
        study was forwarded is a resend that has just arrived for a reopened study: kept.
        """
        resolved = path.resolve()
        if not resolved.is_relative_to(self.spool_root) or resolved == self.spool_root:
            log_event("purge_refused", logging.ERROR, stage="retention", reason="outside_spool")
            return 0
        try:
            info = resolved.stat()
            if info.st_mtime > written_before:
                return 0
            resolved.unlink()
        except FileNotFoundError:
            return 0
        return info.st_size


class RetentionLoop:
    """Runs `Retention.purge` every `interval_s` on its own thread (no PHI in its logs)."""

    def __init__(self, retention: Retention, interval_s: float) -> None:
        self.retention = retention
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.retention.purge()
            except Exception as error:  # a failed pass must not end retention for good
                log_event("retention_error", logging.ERROR, error=type(error).__name__)
            self._stop.wait(self.interval_s)


def build_retention(
    settings: RetentionSettingsLike,
    journal: IntakeJournal,
    spool_root: Path,
    audit: AuditTrail,
    pseudo_study_uid: Callable[[str, int], str | None],
) -> RetentionLoop:
    """The retention loop of `edge-forwarder run`, from the config's [retention] section."""
    policy = RetentionPolicy(
        delivered_days=settings.delivered_days,
        quarantine_days=settings.quarantine_days,
        low_disk_free_bytes=settings.low_disk_free_bytes,
    )
    retention = Retention(journal, spool_root, policy, audit, pseudo_study_uid)
    return RetentionLoop(retention, settings.check_interval_s)
