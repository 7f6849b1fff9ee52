"""Retention: forwarded originals and old quarantine go; undelivered studies never do."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from edge_forwarder.cli import main
from edge_forwarder.durable_db import open_durable_db
from edge_forwarder.intake.journal import _SCHEMA as INTAKE_SCHEMA
from edge_forwarder.intake.journal import Journal
from edge_forwarder.intake.spool import Spool
from edge_forwarder.observability import AuditTrail
from edge_forwarder.retention import DAY_S, PurgeReport, Retention, RetentionLoop, RetentionPolicy

EXAMPLE = Path(__file__).parents[3] / "edge_forwarder" / "example-config.toml"
INSTANCE = b"\x00" * 4096  # stands in for an identified original


class Edge:
    """An intake journal and spool with studies put in the states retention sees."""

    def __init__(self, root: Path) -> None:
        self.spool = Spool(root / "spool")
        self.journal = Journal(root / "spool" / "journal.sqlite3")
        self.audit_path = root / "audit.jsonl"
        self.audit = AuditTrail(self.audit_path, "site-a")

    def study(self, name: str, instances: int = 3, forwarded: bool = True) -> list[Path]:
        key = self.journal.study_key_for(f"1.2.3.{name}", time.time())
        paths = []
        for number in range(instances):
            path = self.spool.path_for(key, f"1.2.3.{name}.{number}")
            self.spool.write_durably(path, INSTANCE)
            self.journal.add_instance(key, f"1.2.3.{name}.{number}", "1.2.3.9", path,
                                      len(INSTANCE), {}, time.time())  # fmt: skip
            paths.append(path)
        if forwarded:
            assert self.journal.claim(key, 1, "model")
            self.journal.finish(key, 1, "FORWARDED", None)
            time.sleep(0.01)  # distinct forwarding times: "oldest first" is observable
        return paths

    def retention(self, free: list[int], days_later: float = 0.0) -> Retention:
        return Retention(
            self.journal,
            self.spool.root,
            RetentionPolicy(delivered_days=7, quarantine_days=7, low_disk_free_bytes=10_000),
            self.audit,
            pseudo_study_uid=lambda key, run: f"2.25.{abs(hash(key)) % 10**12}",
            free_bytes=lambda: free[0],
            clock=lambda: time.time() + days_later * DAY_S,
        )

    def audit_rows(self) -> list[dict[str, object]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    return Edge(tmp_path)


def test_forwarded_originals_go_after_retention_undelivered_stay(edge: Edge) -> None:
    # Given a forwarded study, a study still waiting to be forwarded, and plenty of disk
    forwarded = edge.study("a")
    waiting = edge.study("b", forwarded=False)
    # When retention runs before the 7 days have passed, Then nothing is deleted
    assert edge.retention([10**9], days_later=6.9).purge().studies == 0
    assert all(p.exists() for p in forwarded + waiting)
    # When it runs 8 days later
    report = edge.retention([10**9], days_later=8).purge()
    # Then the forwarded originals are gone, the waiting study untouched, and it is audited
    assert (report.studies, report.instances) == (1, 3)
    assert not any(p.exists() for p in forwarded)
    assert all(p.exists() for p in waiting)
    (row,) = edge.audit_rows()
    assert row["resourceType"] == "AuditEvent" and row["action"] == "D"
    assert row["type"]["code"] == "110105"  # type: ignore[index]
    assert "reason=retention instances=3" in str(row["outcomeDesc"])
    # And a late instance for the purged study reopens it as a new run with only itself
    assert edge.journal.instance_paths(edge.journal.study_key_for("1.2.3.a", 0)) == {}


def test_low_disk_purges_oldest_forwarded_first_until_room(edge: Edge) -> None:
    # Given three forwarded studies (oldest first) and one waiting, with disk below the mark
    oldest, middle, newest = edge.study("a"), edge.study("b"), edge.study("c")
    waiting = edge.study("d", forwarded=False)
    free = [5_000]
    retention = edge.retention(free)
    deleted: list[str] = []
    original_unlink = Path.unlink

    def unlink_and_free(path: Path, missing_ok: bool = False) -> None:
        # The probe sees space come back as files go: 4 KiB each.
        original_unlink(path, missing_ok=missing_ok)
        deleted.append(path.parent.name)
        free[0] += len(INSTANCE)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "unlink", unlink_and_free)
        report = retention.purge()
    # Then only the oldest study went (its 12 KiB lifted free space over 10 000 bytes)
    assert report.studies == 1 and not any(p.exists() for p in oldest)
    assert all(p.exists() for p in middle + newest + waiting)
    assert "reason=low_disk" in str(edge.audit_rows()[0]["outcomeDesc"])


def test_low_disk_never_touches_an_undelivered_study(edge: Edge) -> None:
    # Given only studies not yet forwarded (one open, one reopened by a late instance)
    waiting = edge.study("a", forwarded=False)
    reopened = edge.study("b")
    key = edge.journal.study_key_for("1.2.3.b", 0)
    late = edge.spool.path_for(key, "1.2.3.b.late")
    edge.spool.write_durably(late, INSTANCE)
    edge.journal.add_instance(key, "1.2.3.b.late", "1.2.3.9", late, 1, {}, time.time())
    # When disk is critically low and retention runs long after
    report = edge.retention([0], days_later=30).purge()
    # Then nothing is deleted: the disk stays low, and intake refusing is the right answer
    assert report.studies == 0
    assert all(p.exists() for p in [*waiting, *reopened, late])


def test_quarantine_goes_after_its_retention(edge: Edge) -> None:
    path = edge.spool.quarantine_path(b"burned-in")
    edge.spool.write_durably(path, b"burned-in")
    edge.journal.add_quarantine(None, path, "burned_in_annotation", time.time())
    assert edge.retention([10**9], days_later=6).purge().quarantined == 0
    assert edge.retention([10**9], days_later=8).purge().quarantined == 1
    assert not path.exists() and edge.journal.quarantined() == []
    assert "quarantine_retention" in str(edge.audit_rows()[-1]["outcomeDesc"])


def test_tampered_journal_path_outside_the_spool_is_not_deleted(edge: Edge, tmp_path: Path) -> None:
    # Given a journal row (altered on disk) naming a file outside the spool
    victim = tmp_path / "not-spool" / "keep.txt"
    victim.parent.mkdir()
    victim.write_text("operator's file")
    os.utime(victim, (0, 0))
    key = edge.journal.study_key_for("1.2.3.x", time.time())
    edge.journal.add_instance(key, "1.2.3.x.1", "1.2.3.9", victim, 1, {}, time.time())
    assert edge.journal.claim(key, 1, "model")
    edge.journal.finish(key, 1, "FORWARDED", None)
    # When retention purges that study, Then the file outside the spool survives
    edge.retention([10**9], days_later=8).purge()
    assert victim.read_text() == "operator's file"


def test_status_shows_spool_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edge = Edge(tmp_path)
    edge.study("a")
    edge.study("b", forwarded=False, instances=2)
    for name in ("site-secret.hex", "crosswalk-key.hex"):
        (tmp_path / name).write_text("ab" * 32)
    text = EXAMPLE.read_text().replace("/etc/edge-forwarder/", "")
    text = text.replace('spool_dir = "/var/lib/edge-forwarder/spool"', 'spool_dir = "spool"')
    text = text.replace('state_dir = "/var/lib/edge-forwarder"', 'state_dir = "state"')
    (tmp_path / "forwarder.toml").write_text(text)
    assert main(["--config", str(tmp_path / "forwarder.toml"), "status", "--spool"]) == 0
    out = capsys.readouterr().out
    assert "awaiting forwarding: 1 studies, 2 instances" in out
    assert "forwarded, kept 7 days: 1 studies, 3 instances" in out
    assert "disk free" in out
    assert main(["--config", str(tmp_path / "forwarder.toml"), "status", "--spool", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["delivered_bytes"] == 3 * len(INSTANCE) and report["pending_instances"] == 2


def test_retention_loop_keeps_running_after_a_failed_pass(edge: Edge) -> None:
    # Given a retention whose first pass fails (e.g. the journal is locked for a moment)
    passes: list[int] = []
    done = threading.Event()
    retention = edge.retention([10**9])
    real_purge = retention.purge

    def flaky_purge() -> PurgeReport:
        passes.append(1)
        if len(passes) == 1:
            raise OSError("transient")
        done.set()
        return real_purge()

    retention.purge = flaky_purge  # type: ignore[method-assign]
    loop = RetentionLoop(retention, interval_s=0.01)
    # When the loop runs, Then the next pass still happens
    loop.start()
    try:
        assert done.wait(10)
    finally:
        loop.stop()
    assert len(passes) >= 2


def test_a_journal_from_before_retention_gets_its_forwarded_studies_dated(tmp_path: Path) -> None:
    # Given an intake journal written before forwarded_at existed, with a forwarded study
    path = tmp_path / "journal.sqlite3"
    old = open_durable_db(path, INTAKE_SCHEMA)  # the schema of the first release
    old.execute("INSERT INTO study VALUES ('st-old', '1.2.3', 'FORWARDED', 1, 5, 7, 'm', 0, NULL)")
    old.execute("INSERT INTO instance VALUES ('1.2.3.1', 'st-old', '1.2.3.9', 'x', 6, 10, '{}')")
    old.close()
    # When the current forwarder opens it
    journal = Journal(path)
    # Then the study counts as forwarded at its last instance, and retention sees it
    (study,) = journal.delivered_studies()
    assert (study.study_key, study.forwarded_at, study.instance_count) == ("st-old", 7.0, 1)
    journal.close()
