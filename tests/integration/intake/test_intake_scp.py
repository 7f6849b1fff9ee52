"""Intake over real associations: DCMTK storescu/echoscu and pynetdicom as the modality."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE

from edge_forwarder.intake import CompletedStudy, ExpectedSeriesRule, Intake, RoutingRule
from edge_forwarder.intake.settings import SenderRule
from tests.integration.intake.conftest import SpooledStudy, send, write_study

pytestmark = pytest.mark.integration
LATER = 3600.0


def storescu(
    port: int, paths: list[Path], calling: str = "MODALITY"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", "EDGE_FWD", "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _after_quiet_time(intake: Intake) -> list[CompletedStudy]:
    """The studies the intake hands out once their quiet timers have run out."""
    return intake.poll_completed(now=time.time() + LATER)


def _instance_count(run: CompletedStudy) -> int:
    return sum(len(files) for files in run.series.values())


def test_storescu_multi_series_study_completes_once(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    # Given the intake and a two-series CT study sent by DCMTK storescu
    intake = start_intake()
    assert storescu(intake.port, study.paths).returncode == 0
    # When the quiet timer has not expired yet, nothing is complete
    assert intake.poll_completed() == []
    # Then once it has, the study comes out exactly once, routed, with every series
    completed = _after_quiet_time(intake)
    assert len(completed) == 1
    done = completed[0]
    assert (done.run_number, done.models) == (1, ("lung-nodule-demo",))
    assert {uid: len(files) for uid, files in done.series.items()} == {
        uid: len(files) for uid, files in study.series.items()
    }
    sent = {pydicom.dcmread(p).SOPInstanceUID for p in study.paths}
    spooled = {pydicom.dcmread(p).SOPInstanceUID for files in done.series.values() for p in files}
    assert spooled == sent
    assert _after_quiet_time(intake) == []
    assert study.study_uid not in done.study_key


def test_late_instances_open_a_revision_run(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    intake = start_intake()
    study = write_study(tmp_path / "s", series_count=2, slices=3)
    first_series, late_series = list(study.series.values())
    assert storescu(intake.port, first_series).returncode == 0
    [run1] = _after_quiet_time(intake)
    intake.mark_forwarded(run1.study_key, run1.run_number)
    # When a series arrives after the study was forwarded
    assert storescu(intake.port, late_series).returncode == 0
    # Then a second run of the same study comes out, with every instance
    [run2] = _after_quiet_time(intake)
    assert (run2.study_key, run2.run_number) == (run1.study_key, 2)
    assert _instance_count(run2) == len(study.paths)


def test_instance_arriving_during_forwarding_opens_the_next_run(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    intake = start_intake()
    study = write_study(tmp_path / "s", series_count=1, slices=3)
    assert storescu(intake.port, study.paths[:2]).returncode == 0
    [run1] = _after_quiet_time(intake)
    assert storescu(intake.port, study.paths[2:]).returncode == 0  # while run 1 is claimed
    assert _after_quiet_time(intake) == []
    intake.mark_failed(run1.study_key, run1.run_number, "upload_timeout")
    [run2] = _after_quiet_time(intake)
    assert run2.run_number == 2 and _instance_count(run2) == 3


def test_restart_resumes_every_study_where_it_stopped(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    # Given a study received and handed out, but never marked forwarded
    intake = start_intake()
    assert storescu(intake.port, study.paths).returncode == 0
    [claimed] = _after_quiet_time(intake)
    intake.stop()
    # When the intake restarts on the same spool
    restarted = start_intake()
    # Then the unfinished run is handed out again with all its instances
    [again] = _after_quiet_time(restarted)
    handed_out_again = (again.study_key, again.run_number, _instance_count(again))
    assert handed_out_again == (claimed.study_key, 1, len(study.paths))


def test_routing_rules_choose_the_model_and_unmatched_studies_stay(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    rules = [
        RoutingRule(model="mr-brain", modality=["MR"]),
        RoutingRule(model="lung-thin", modality=["CT"], series_description=r"lung\s+1mm",
                    body_part=["CHEST"], tags={"Manufacturer": "^GE "}),
    ]  # fmt: skip
    intake = start_intake(routing=rules)
    routed = write_study(tmp_path / "a", series_count=1)
    assert storescu(intake.port, routed.paths).returncode == 0
    unmatched = write_study(tmp_path / "b", series_count=2)
    for path in unmatched.series[next(iter(unmatched.series))]:
        path.unlink()  # leave only the soft-tissue series, which no rule matches
    assert storescu(intake.port, [p for p in unmatched.paths if p.exists()]).returncode == 0
    completed = _after_quiet_time(intake)
    assert [c.models for c in completed] == [("lung-thin",)]
    assert intake.poll_completed(now=time.time() + 2 * LATER) == []


def test_expected_series_rule_holds_a_study_until_it_arrives_or_the_wait_ends(
    start_intake: Callable[..., Intake], tmp_path: Path
) -> None:
    rule = ExpectedSeriesRule(name="thin lung", series_description="LUNG", min_instances=2)
    intake = start_intake(expected_series=[rule], expected_series_max_wait_seconds=600)
    study = write_study(tmp_path / "s", series_count=2, slices=2)
    lung, soft = list(study.series.values())
    assert storescu(intake.port, soft).returncode == 0
    assert intake.poll_completed(now=time.time() + 60) == []
    assert storescu(intake.port, lung).returncode == 0
    assert len(intake.poll_completed(now=time.time() + 60)) == 1


def test_full_disk_answers_out_of_resources_and_keeps_nothing(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    intake = start_intake(min_free_disk_bytes=10**18)
    assert set(send(intake.port, study.paths[:2])) == {0xA700}
    assert list((intake.settings.spool_dir / "objects").rglob("*.dcm")) == []
    assert _after_quiet_time(intake) == []


def test_unwritable_spool_answers_out_of_resources(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    intake = start_intake()
    objects = intake.settings.spool_dir / "objects"
    shutil.rmtree(objects)
    objects.write_bytes(b"")  # a file where the spool folder should be: every write fails
    assert send(intake.port, study.paths[:1]) == [0xA700]
    assert _after_quiet_time(intake) == []


def test_calling_ae_allow_list(start_intake: Callable[..., Intake]) -> None:
    intake = start_intake(
        senders=[SenderRule(name="ct", ae_title="CT_SCANNER", addresses=["127.0.0.0/8"])]
    )
    echo = ["echoscu", "-aec", "EDGE_FWD", "127.0.0.1", str(intake.port)]
    assert subprocess.run([*echo, "-aet", "CT_SCANNER"], capture_output=True).returncode == 0
    assert subprocess.run([*echo, "-aet", "INTRUDER"], capture_output=True).returncode != 0


def test_burned_in_risk_and_missing_pixel_data_are_quarantined(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    intake = start_intake()
    base = pydicom.dcmread(study.paths[0])
    burned = copy.deepcopy(base)
    burned.BurnedInAnnotation = "YES"
    capture = copy.deepcopy(base)
    capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    no_pixels = copy.deepcopy(base)
    del no_pixels.PixelData
    assert send(intake.port, [burned, capture, no_pixels]) == [0, 0, 0]
    reasons = sorted(reason for _, _, reason in intake.journal.quarantined())
    assert reasons == ["burned_in_annotation", "burned_in_risk_sop_class", "missing_pixel_data"]
    assert _after_quiet_time(intake) == []


def test_missing_uid_and_garbage_get_failure_statuses(
    start_intake: Callable[..., Intake], study: SpooledStudy, tmp_path: Path
) -> None:
    intake = start_intake()
    no_study = pydicom.dcmread(study.paths[0])
    del no_study.StudyInstanceUID
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(study.paths[1].read_bytes()[:-1000])
    statuses = send(intake.port, [no_study, truncated])
    assert statuses == [0xA900, 0xC210]
    echo = ["echoscu", "-aet", "MODALITY", "-aec", "EDGE_FWD", "127.0.0.1", str(intake.port)]
    assert subprocess.run(echo, capture_output=True).returncode == 0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields_of(self, message: str) -> list[dict[str, object]]:
        return [getattr(r, "fields", {}) for r in self.records if r.getMessage() == message]

    def everything(self) -> str:
        return repr([(r.getMessage(), getattr(r, "fields", {})) for r in self.records])


@contextlib.contextmanager
def _intake_log_records() -> Iterator[_Records]:
    """What the intake logs at INFO while the block runs."""
    intake_log, records = logging.getLogger("edge_forwarder.intake"), _Records()
    saved_level = intake_log.level
    intake_log.setLevel(logging.INFO)
    intake_log.addHandler(records)
    try:
        yield records
    finally:
        intake_log.removeHandler(records)
        intake_log.setLevel(saved_level)


def test_received_is_logged_once_per_study_when_its_first_instance_is_stored(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    # Given the intake logging at INFO
    intake = start_intake()
    with _intake_log_records() as records:
        # When a study arrives over two associations, one instance sent twice
        assert set(send(intake.port, study.paths[:1])) == {0}
        assert set(send(intake.port, study.paths)) == {0}
    # Then `received` is logged once, with the opaque study key and no PHI
    [done] = _after_quiet_time(intake)
    expected = [{"stage": "received", "study_key": done.study_key, "count": 1}]
    assert records.fields_of("received") == expected
    assert study.study_uid not in records.everything()


def test_an_association_the_sender_aborts_is_logged_and_keeps_what_was_acknowledged(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    # Given the intake logging at INFO, and a sender that stores one instance, then aborts
    intake = start_intake()
    with _intake_log_records() as records:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(str(pydicom.dcmread(study.paths[0]).SOPClassUID))
        assoc = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
        assert assoc.is_established
        assert int(assoc.send_c_store(study.paths[0]).Status) == 0
        assoc.abort()
        # When the intake has handled the abort (its own thread: wait for the record)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not records.fields_of("association_aborted"):
            time.sleep(0.05)
    # Then the abort is on the site's record, naming the sender's rule and no PHI
    assert records.fields_of("association_aborted") == [{"name": "modality"}]
    assert study.study_uid not in records.everything()
    # ... and the instance acknowledged before it is still on the edge
    [done] = _after_quiet_time(intake)
    assert _instance_count(done) == 1


def test_a_restart_sweeps_files_no_journal_row_names(
    start_intake: Callable[..., Intake], study: SpooledStudy
) -> None:
    # Given a stored study, and a file a store that crashed before its commit left in place
    intake = start_intake()
    assert send(intake.port, study.paths[:2]) == [0, 0]
    orphan = intake.spool.object_path()
    orphan.write_bytes(study.paths[2].read_bytes())
    intake.stop()
    # When the intake starts again on the same spool
    restarted = start_intake()
    # Then the orphan is gone and every acknowledged instance is still there
    assert not orphan.exists()
    on_disk = {str(p) for p in (restarted.settings.spool_dir / "objects").rglob("*.dcm")}
    assert on_disk == restarted.journal.paths() and len(on_disk) == 2


def test_an_instance_is_acknowledged_only_once_its_file_folder_and_journal_row_are_on_disk(
    start_intake: Callable[..., Intake], study: SpooledStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the intake, with every fsync it completes recorded by the path it made durable
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    intake = start_intake()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(str(pydicom.dcmread(study.paths[0]).SOPClassUID))
    assoc = ae.associate("127.0.0.1", intake.port, ae_title="EDGE_FWD")
    assert assoc.is_established
    try:
        for path in study.paths[:3]:
            sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            # When an instance is acknowledged
            assert int(assoc.send_c_store(path).Status) == 0
            # Then its journal row is committed (read from another connection)
            journal = sqlite3.connect(intake.settings.spool_dir / "journal.sqlite3")
            [(stored,)] = journal.execute(
                "SELECT path FROM instance WHERE sop_uid = ?", (sop_uid,)
            ).fetchall()
            journal.close()
            # and its file, and the folder that names it, were fsync'ed before the answer
            assert stored in synced
            assert str(Path(stored).parent) in synced
    finally:
        assoc.release()
