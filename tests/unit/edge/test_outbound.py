"""Outbound alone: a completed study is de-identified, packed, prepared and uploaded once."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest

from edge_forwarder.deid import Deidentifier, DeidResult
from edge_forwarder.intake import CompletedStudy
from edge_forwarder.observability import Telemetry
from edge_forwarder.outbound import Outbound, make_run_id
from edge_forwarder.transport.errors import TransientError
from edge_forwarder.transport.journal import Journal
from imaging_ai.contracts import Priority
from imaging_ai.edge_stage import OUTBOUND_ORDER, EdgeStage
from imaging_ai.synthetic import SyntheticStudy, write_ct_study
from tests.edge_support import ListIntake
from tests.unit.edge.conftest import FakeUploader

SECRET = b"site-secret-for-unit-tests-0123456"


class RecordingVault:
    def __init__(self) -> None:
        self.recorded: list[DeidResult] = []

    def record(self, site: str, result: DeidResult) -> None:
        self.recorded.append(result)


@pytest.fixture
def study(tmp_path: Path) -> SyntheticStudy:
    return write_ct_study(tmp_path / "ct", seed=3, shape=(3, 16, 16), spacing_mm=(2.0, 2.0, 2.0))


def _completed(study: SyntheticStudy, run_number: int = 1) -> CompletedStudy:
    return CompletedStudy("key-1", run_number, ("lung-nodule-ct",), {"s": list(study.paths)})


def _outbound(
    tmp_path: Path,
    journal: Journal,
    telemetry: Telemetry,
    intake: ListIntake,
    shadow_models: frozenset[str] = frozenset(),
    **kw: object,
) -> tuple[Outbound, FakeUploader, RecordingVault]:
    uploader, vault = FakeUploader(**kw), RecordingVault()  # type: ignore[arg-type]
    outbound = Outbound(
        site="site-a",
        journal=journal,
        intake=intake,
        deidentifier=Deidentifier(SECRET),
        crosswalk=vault,
        uploader=uploader,
        telemetry=telemetry,
        outbox=tmp_path / "outbox",
        stop=threading.Event(),
        shadow_models=shadow_models,
    )
    return outbound, uploader, vault


def _stages(journal: Journal, run_id: str) -> list[str]:
    return [stage for _, stage, _ in journal.timeline(run_id)]


def test_a_completed_study_goes_through_each_stage_once_and_leaves_pseudonymous(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, study: SyntheticStudy
) -> None:
    # Given the intake hands over a completed study
    intake = ListIntake([_completed(study)])
    outbound, uploader, vault = _outbound(tmp_path, journal, telemetry, intake)
    # When the outbound loop runs once
    outbound.tick()
    # Then the run moved through every outbound stage in order, named by its pseudonym
    (run,) = journal.runs()
    pseudo_study_uid = Deidentifier(SECRET).pseudo_uid(study.study_instance_uid)
    assert run.pseudo_study_uid == pseudo_study_uid
    assert run.run_id == make_run_id(pseudo_study_uid, 1, "lung-nodule-ct")
    assert _stages(journal, run.run_id) == list(OUTBOUND_ORDER)
    # ... the uploader got one pseudonymous series tar holding every instance
    (prepared,) = uploader.prepared
    ((tar_name, members),) = prepared.members.items()
    sop_pseudonyms = {r.pseudo.sop_instance_uid for r in vault.recorded}
    assert tar_name == f"{vault.recorded[0].pseudo.series_instance_uid}.tar"
    assert sorted(members) == sorted(f"{uid}.dcm" for uid in sop_pseudonyms)
    assert prepared.model_name == "lung-nodule-ct" and prepared.revises_run_id is None
    assert prepared.deidentification.method_codes[0] == "113100"
    # ... the crosswalk kept every instance, and the intake was told once
    assert len(vault.recorded) == len(study.paths)
    assert {r.identity.study_instance_uid for r in vault.recorded} == {study.study_instance_uid}
    assert intake.forwarded == [("key-1", 1)] and intake.failed == []
    assert uploader.uploaded == [run.run_id]


def test_complete_is_recorded_before_de_identification_fails(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, study: SyntheticStudy
) -> None:
    # Given a study whose every instance is a secondary capture (burned-in text risk)
    for path in study.paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.save_as(path)
    intake = ListIntake([_completed(study)])
    outbound, uploader, _ = _outbound(tmp_path, journal, telemetry, intake)
    # When the outbound loop takes it
    outbound.tick()
    # Then the run completed, then failed: nothing was prepared, the intake knows why
    (run,) = journal.runs()
    assert _stages(journal, run.run_id) == [
        EdgeStage.RECEIVED,
        EdgeStage.COMPLETE,
        EdgeStage.FAILED,
    ]
    assert run.stage is EdgeStage.FAILED and run.reason == "PermanentError"
    assert uploader.prepared == [] and intake.failed == [("key-1", 1, "PermanentError")]


def test_an_upload_that_fails_is_resumed_by_the_next_pass_without_a_second_prepare(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, study: SyntheticStudy
) -> None:
    # Given S3 fails the first upload
    intake = ListIntake([_completed(study)])
    outbound, uploader, _ = _outbound(tmp_path, journal, telemetry, intake, fail_uploads=1)
    # When the outbound loop runs (the loop catches and logs the error) and runs again
    with pytest.raises(TransientError):
        outbound.tick()
    (run,) = journal.runs()
    assert run.stage is EdgeStage.UPLOADING and intake.forwarded == []
    outbound.tick()
    # Then the run is uploaded, prepared once, the intake told once
    assert journal.run(run.run_id).stage is EdgeStage.UPLOADED  # type: ignore[union-attr]
    assert len(uploader.prepared) == 1 and intake.forwarded == [("key-1", 1)]
    assert _stages(journal, run.run_id).count(EdgeStage.UPLOADING) == 1


def test_a_study_interrupted_after_de_identification_is_taken_again_under_the_same_run(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, study: SyntheticStudy
) -> None:
    # Given a run that was de-identified when the forwarder stopped (a kill -9)
    pseudo_study_uid = Deidentifier(SECRET).pseudo_uid(study.study_instance_uid)
    run_id = make_run_id(pseudo_study_uid, 1, "lung-nodule-ct")
    journal.open_run(run_id, "key-1", 1, pseudo_study_uid, model_name="lung-nodule-ct")
    journal.advance(run_id, EdgeStage.COMPLETE)
    journal.advance(run_id, EdgeStage.DEIDENTIFIED)
    intake = ListIntake([_completed(study)])
    outbound, uploader, _ = _outbound(tmp_path, journal, telemetry, intake)
    # When the intake hands the study over again
    outbound.tick()
    # Then the same run carries on from where it was: prepared and uploaded
    assert [r.run_id for r in journal.runs()] == [run_id]
    assert _stages(journal, run_id) == list(OUTBOUND_ORDER)
    assert [p.run_id for p in uploader.prepared] == [run_id]


def test_a_revision_run_names_the_run_it_revises(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, study: SyntheticStudy
) -> None:
    # Given a study forwarded once, and late instances made it complete again (run 2)
    intake = ListIntake([_completed(study, 1)])
    outbound, uploader, _ = _outbound(tmp_path, journal, telemetry, intake)
    outbound.tick()
    intake.ready = [_completed(study, 2)]
    # When run 2 is taken
    outbound.tick()
    # Then its manifest points back at run 1
    first, second = uploader.prepared
    assert second.revises_run_id == first.run_id != second.run_id


def test_a_study_routed_to_two_models_is_uploaded_once_with_one_run_per_model(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, study: SyntheticStudy
) -> None:
    # Given a study routed to two models, the second in shadow mode at this site
    routed = CompletedStudy("key-1", 1, ("lung-nodule-ct", "lung-next"), {"s": list(study.paths)})
    intake = ListIntake([routed])
    outbound, uploader, vault = _outbound(
        tmp_path, journal, telemetry, intake, shadow_models=frozenset({"lung-next"})
    )
    # When the outbound loop runs once
    outbound.tick()
    # Then each model has its own run, both uploaded, the shadow one marked so
    runs = {run.model_name: run for run in journal.runs()}
    assert set(runs) == {"lung-nodule-ct", "lung-next"}
    live, shadow = runs["lung-nodule-ct"], runs["lung-next"]
    assert live.run_id != shadow.run_id and not live.shadow and shadow.shadow
    for run in (live, shadow):
        assert run.stage is EdgeStage.UPLOADED
        assert _stages(journal, run.run_id) == list(OUTBOUND_ORDER)
    # ... from one de-identification and one upload whose manifest names both runs
    assert len(vault.recorded) == len(study.paths)
    (prepared,) = uploader.prepared
    assert [(r.run_id, r.model_name, r.shadow) for r in prepared.runs] == [
        (live.run_id, "lung-nodule-ct", False),
        (shadow.run_id, "lung-next", True),
    ]
    assert uploader.uploaded[0] == prepared.run_id
    assert intake.forwarded == [("key-1", 1)]


def test_a_revision_revises_the_same_models_earlier_run(
    tmp_path: Path, journal: Journal, telemetry: Telemetry, study: SyntheticStudy
) -> None:
    # Given a study forwarded to two models, then completed again by late instances
    models = ("lung-nodule-ct", "lung-next")
    intake = ListIntake([CompletedStudy("key-1", 1, models, {"s": list(study.paths)})])
    outbound, uploader, _ = _outbound(tmp_path, journal, telemetry, intake)
    outbound.tick()
    intake.ready = [CompletedStudy("key-1", 2, models, {"s": list(study.paths)})]
    # When run 2 is taken
    outbound.tick()
    # Then each model's run 2 points back at that model's run 1
    first, second = uploader.prepared
    earlier = {run.model_name: run.run_id for run in first.runs}
    assert {run.model_name: run.revises_run_id for run in second.runs} == earlier


def test_a_stat_study_listed_last_is_prepared_and_uploaded_first(
    tmp_path: Path, journal: Journal, telemetry: Telemetry
) -> None:
    # Given the intake lists two routine studies, then a STAT one
    studies = [
        write_ct_study(tmp_path / f"ct-{n}", seed=n, shape=(2, 16, 16), spacing_mm=(2.0, 2.0, 2.0))
        for n in range(3)
    ]
    priorities = [Priority.ROUTINE, Priority.ROUTINE, Priority.STAT]
    intake = ListIntake(
        [
            CompletedStudy(f"key-{n}", 1, ("m",), {"s": list(s.paths)}, priority)
            for n, (s, priority) in enumerate(zip(studies, priorities, strict=True))
        ]
    )
    outbound, uploader, _ = _outbound(tmp_path, journal, telemetry, intake)
    # When the outbound loop runs once
    outbound.tick()
    # Then the STAT study was de-identified, prepared (as STAT) and uploaded before the others
    assert [p.priority for p in uploader.prepared] == [Priority.STAT, *priorities[:2]]
    assert uploader.uploaded == [p.run_id for p in uploader.prepared]
    assert intake.forwarded[0] == ("key-2", 1)
    assert journal.run(uploader.prepared[0].run_id).priority is Priority.STAT  # type: ignore[union-attr]
