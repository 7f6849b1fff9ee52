"""No silent overwrite: a second version of a stored SOP Instance UID, sent by real SCUs.

The rule (docs/edge-forwarder.md): the sender that stored an instance may replace it while its
study is still on the edge and not handed out for forwarding (a modality's correction), with
an audit row. Any other different version is quarantined with an audit row, and the stored
one stays. An identical resend changes nothing.
"""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from edge_forwarder.intake import Intake
from edge_forwarder.intake.settings import SenderRule
from tests.integration.intake.conftest import SpooledStudy, send

pytestmark = pytest.mark.integration
LATER = 3600.0
SENDERS = [
    SenderRule(name="ct-scanner", ae_title="MODALITY", addresses=["127.0.0.1"]),
    SenderRule(name="pacs-router", ae_title="ROUTER", addresses=["127.0.0.1"]),
]


def _storescu(port: int, path: Path, calling: str) -> None:
    sent = subprocess.run(
        ["storescu", "-aet", calling, "-aec", "EDGE_FWD", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr[-400:]


def _corrected(path: Path, out: Path) -> Dataset:
    """The same instance (same SOP Instance UID) with a corrected value: different bytes."""
    ds = pydicom.dcmread(path)
    fixed = copy.deepcopy(ds)
    fixed.SeriesDescription = "CHEST LUNG 1MM CORRECTED"
    fixed.save_as(out, enforce_file_format=True)
    return fixed


def _stored_version(intake: Intake, study_key: str, sop_uid: str) -> Dataset:
    for files in intake.journal.instance_paths(study_key).values():
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.SOPInstanceUID == sop_uid:
                return ds
    raise AssertionError("instance not in the journal")


def test_the_same_sender_may_replace_an_instance_before_forwarding_with_an_audit_row(
    start_intake: Callable[..., Intake], study: SpooledStudy, tmp_path: Path
) -> None:
    # Given a study stored by the CT scanner and not yet forwarded
    intake = start_intake(senders=SENDERS)
    _storescu(intake.port, study.paths[0], "MODALITY")
    original_files = list((intake.settings.spool_dir / "objects").rglob("*.dcm"))
    # When the scanner resends the first instance with a correction (DCMTK storescu)
    fixed = _corrected(study.paths[0], tmp_path / "fixed.dcm")
    _storescu(intake.port, tmp_path / "fixed.dcm", "MODALITY")
    # Then the study holds the corrected version only, and the old file is gone
    [done] = intake.poll_completed(now=time.time() + LATER)
    stored = _stored_version(intake, done.study_key, str(fixed.SOPInstanceUID))
    assert stored.SeriesDescription == "CHEST LUNG 1MM CORRECTED"
    assert sum(len(files) for files in done.series.values()) == 1
    assert not any(path.exists() for path in original_files)
    # and the audit trail says who replaced what, without PHI
    [row] = intake.journal.audit_rows()
    assert (row.event, row.study_key, row.sender) == (
        "instance_replaced",
        done.study_key,
        "ct-scanner",
    )
    assert intake.journal.quarantined() == []


def test_another_sender_never_replaces_a_stored_instance(
    start_intake: Callable[..., Intake], study: SpooledStudy, tmp_path: Path
) -> None:
    # Given an instance stored by the CT scanner
    intake = start_intake(senders=SENDERS)
    _storescu(intake.port, study.paths[0], "MODALITY")
    # When another allowed sender stores different bytes under the same SOP Instance UID
    fixed = _corrected(study.paths[0], tmp_path / "other.dcm")
    assert send(intake.port, [fixed], calling="ROUTER") == [0x0000]
    # Then the scanner's version stays, the other is quarantined, and both are audited
    [done] = intake.poll_completed(now=time.time() + LATER)
    stored = _stored_version(intake, done.study_key, str(fixed.SOPInstanceUID))
    assert stored.SeriesDescription == "CHEST LUNG 1MM"
    [(study_key, path, reason)] = intake.journal.quarantined()
    assert (study_key, reason) == (done.study_key, "conflict_other_sender")
    assert pydicom.dcmread(path).SeriesDescription == "CHEST LUNG 1MM CORRECTED"
    [row] = intake.journal.audit_rows()
    assert (row.event, row.sender, row.reason) == (
        "instance_conflict_quarantined",
        "pacs-router",
        "conflict_other_sender",
    )


def test_after_forwarding_even_the_same_sender_cannot_replace_an_instance(
    start_intake: Callable[..., Intake], study: SpooledStudy, tmp_path: Path
) -> None:
    # Given a study that was forwarded
    intake = start_intake(senders=SENDERS)
    assert send(intake.port, study.paths[:2]) == [0, 0]
    [run] = intake.poll_completed(now=time.time() + LATER)
    intake.mark_forwarded(run.study_key, run.run_number)
    # When its sender resends one instance with different bytes (pynetdicom SCU)
    fixed = _corrected(study.paths[0], tmp_path / "late.dcm")
    assert send(intake.port, [fixed]) == [0x0000]
    # Then it is quarantined with an audit row, the forwarded version stays, no new run opens
    [(_, _, reason)] = intake.journal.quarantined()
    assert reason == "conflict_study_forwarded"
    assert _stored_version(intake, run.study_key, str(fixed.SOPInstanceUID)).SeriesDescription == (
        "CHEST LUNG 1MM"
    )
    assert [r.event for r in intake.journal.audit_rows()] == ["instance_conflict_quarantined"]
    assert intake.poll_completed(now=time.time() + LATER) == []


def test_an_identical_resend_changes_nothing(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    # Given a forwarded study
    intake = start_intake(senders=SENDERS)
    assert send(intake.port, study.paths[:2]) == [0, 0]
    [run] = intake.poll_completed(now=time.time() + LATER)
    intake.mark_forwarded(run.study_key, run.run_number)
    # When the modality resends the very same instances
    assert send(intake.port, study.paths[:2]) == [0, 0]
    # Then they are acknowledged, and nothing is replaced, quarantined, audited or re-run
    assert intake.journal.audit_rows() == [] and intake.journal.quarantined() == []
    assert intake.poll_completed(now=time.time() + LATER) == []
    assert len(list((intake.settings.spool_dir / "objects").rglob("*.dcm"))) == 2
