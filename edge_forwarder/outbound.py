"""Outbound: completed studies de-identified, packed, encrypted and uploaded to S3."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from edge_forwarder.deid import Deidentifier, DeidResult
from edge_forwarder.intake import CompletedStudy
from edge_forwarder.observability import Telemetry, log_event, log_stage
from edge_forwarder.transport.errors import PermanentError
from edge_forwarder.transport.journal import Journal, RunRow
from edge_forwarder.transport.packaging import pack_series
from edge_forwarder.transport.uploader import SeriesTar
from imaging_ai.contracts import DeidRecord, ModelRun, Priority, priority_rank
from imaging_ai.edge_stage import (
    AWAITING_UPLOAD,
    OUTBOUND_ORDER,
    OUTBOUND_UNFINISHED,
    EdgeStage,
)
from imaging_ai.errors import PipelineError


class CompletedStudies(Protocol):
    """The intake's queue of completed studies (`intake.Intake`)."""

    def poll_completed(self) -> list[CompletedStudy]: ...
    def mark_forwarded(self, study_key: str, run_number: int) -> None: ...
    def mark_failed(self, study_key: str, run_number: int, reason: str) -> None: ...


class IdentityStore(Protocol):
    """The crosswalk vault (`crosswalk.CrosswalkVault`)."""

    def record(self, site: str, result: DeidResult) -> None: ...


class Upload(Protocol):
    """Encrypt into the outbox, then send to S3 (`transport.uploader.Uploader`)."""

    def prepare(self, run_id: str, pseudo_study_uid: str, series: list[SeriesTar],
                deidentification: DeidRecord, runs: list[ModelRun],
                priority: Priority = Priority.ROUTINE) -> object: ...  # fmt: skip

    def upload(self, run_id: str, stop: threading.Event | None = None) -> int: ...


def make_run_id(pseudo_study_uid: str, run_number: int, model_name: str) -> str:
    """One model's run of one upload of a study (stable: a study taken again reopens it)."""
    digest = hashlib.sha256(f"{pseudo_study_uid}:{run_number}:{model_name}".encode())
    return f"r{run_number}-{digest.hexdigest()[:10]}"


def pseudo_ids(result: DeidResult) -> tuple[str, str, str]:
    """(study, series, SOP instance) pseudonyms of one de-identified instance."""
    pseudo = result.pseudo
    return pseudo.study_instance_uid, pseudo.series_instance_uid, pseudo.sop_instance_uid


@dataclass
class _Packed:
    series: list[SeriesTar]
    quarantined: int
    last_result: DeidResult | None


@dataclass(kw_only=True)
class Outbound:
    """Takes each completed study once; a study interrupted before PREPARED is taken again.

    A study routed to several models is de-identified, packed and uploaded once, under one
    manifest naming one run per model; each run then has its own stages from there on.
    """

    site: str
    journal: Journal
    intake: CompletedStudies
    deidentifier: Deidentifier
    crosswalk: IdentityStore
    uploader: Upload
    telemetry: Telemetry
    outbox: Path
    stop: threading.Event
    # Models this site runs in shadow mode: their runs are marked so at routing time.
    shadow_models: frozenset[str] = frozenset()

    def tick(self) -> None:
        # STAT first at both steps; a stable sort keeps the intake's order within a priority.
        completed = sorted(self.intake.poll_completed(), key=lambda s: priority_rank(s.priority))
        for study in completed:
            if self.stop.is_set():
                return
            self.take(study)
        pending = self.journal.runs(*AWAITING_UPLOAD)
        self.telemetry.metrics.backlog.set(len(pending))
        uploads = {(run.study_key, run.run_number): run for run in pending}
        for run in uploads.values():
            if self.stop.is_set():
                return
            self.upload(run.run_id)

    # ---- take: complete -> de-identified -> prepared ---------------------------------------

    def take(self, study: CompletedStudy) -> None:
        known = self.journal.runs_for(study.study_key, study.run_number)
        if known and all(run.stage not in OUTBOUND_UNFINISHED for run in known):
            return  # already prepared; the upload pass picks it up
        started = time.monotonic()
        runs: list[RunRow] = known
        try:
            runs = self._open_runs(study)  # opening is idempotent: known runs come back as are
            self._reach(runs, EdgeStage.COMPLETE)
            for run in runs:
                log_stage(
                    EdgeStage.COMPLETE,
                    run_id=run.run_id,
                    study_key=study.study_key,  # ties the run to its study's `received`
                    pseudo_study_uid=run.pseudo_study_uid,
                    run_number=study.run_number,
                    name=run.model_name,
                    series_count=len(study.series),
                    instance_count=_instance_count(study),
                )
            packed = self._deidentify(study)
            self._reach(
                runs,
                EdgeStage.DEIDENTIFIED,
                detail=f"instances={_instance_count(study)} quarantined={packed.quarantined}",
            )
            pseudo_study_uid = runs[0].pseudo_study_uid
            for run in runs:
                self.telemetry.audit.record(
                    "deidentify", pseudo_study_uid=pseudo_study_uid, run_id=run.run_id
                )
                log_stage(
                    EdgeStage.DEIDENTIFIED,
                    run_id=run.run_id,
                    pseudo_study_uid=pseudo_study_uid,
                    instance_count=_instance_count(study),
                    seconds=round(time.monotonic() - started, 2),
                )
            self.telemetry.metrics.studies.labels("deidentified").inc()
            self._prepare(runs, study, packed)
            self.telemetry.metrics.stage_seconds.labels("prepare").observe(
                time.monotonic() - started
            )
        except Exception as error:
            reason = type(error).__name__
            log_event("failed", logging.ERROR, stage=EdgeStage.FAILED, step=EdgeStage.DEIDENTIFIED,
                      run_id=runs[0].run_id if runs else None, reason=reason)  # fmt: skip
            for run in runs:
                self.journal.advance(run.run_id, EdgeStage.FAILED, reason=reason)
            self.intake.mark_failed(study.study_key, study.run_number, reason)
            self.telemetry.metrics.studies.labels("failed").inc()

    def _open_runs(self, study: CompletedStudy) -> list[RunRow]:
        """Open one run per routed model, named after the pseudonymous study UID (known
        before de-identification) and the model."""
        pseudo_study_uid = self.deidentifier.pseudo_uid(_study_instance_uid(study))
        return [
            self.journal.open_run(
                make_run_id(pseudo_study_uid, study.run_number, model),
                study.study_key,
                study.run_number,
                pseudo_study_uid,
                detail=f"instances={_instance_count(study)} priority={study.priority}",
                model_name=model,
                shadow=model in self.shadow_models,
                priority=study.priority,
            )
            for model in study.models
        ]

    def _reach(self, runs: list[RunRow], stage: EdgeStage, detail: str | None = None) -> None:
        """Advance each run to `stage`, unless a taken-again run had reached it before it
        stopped."""
        for known in runs:
            run = self.journal.run(known.run_id)
            assert run is not None
            if OUTBOUND_ORDER.index(run.stage) < OUTBOUND_ORDER.index(stage):
                self.journal.advance(run.run_id, stage, detail=detail)

    def _deidentify(self, study: CompletedStudy) -> _Packed:
        """De-identify every series into its own tar in a fresh folder of the outbox."""
        key_hash = hashlib.sha256(study.study_key.encode()).hexdigest()[:16]
        folder = self.outbox / f"tmp-{key_hash}-{study.run_number}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        packed = _Packed(series=[], quarantined=0, last_result=None)
        for index, paths in enumerate(study.series.values()):
            tar_path = folder / f"series-{index:03d}.tar"
            series = pack_series(
                paths,
                self.deidentifier.deidentify_bytes,
                pseudo_ids,
                tar_path,
                on_deidentified=lambda result: self.crosswalk.record(self.site, result),
                on_quarantined=_log_quarantine,
            )
            packed.quarantined += series.quarantined
            packed.last_result = series.last_result or packed.last_result
            if not series.instances:
                tar_path.unlink()
                continue
            final = tar_path.rename(folder / f"{series.pseudo_series_uid}.tar")
            packed.series.append(
                SeriesTar(series.pseudo_series_uid, series.modality, final, series.instances)
            )
        if not packed.series:
            raise PermanentError("every instance of the study was quarantined")
        return packed

    def _prepare(self, runs: list[RunRow], study: CompletedStudy, packed: _Packed) -> None:
        """Move the tars into the upload's outbox folder (named after its first run) and let
        the uploader encrypt them under one manifest naming every run."""
        assert packed.series and packed.last_result is not None
        lead = runs[0]
        run_dir = self.outbox / lead.run_id
        if run_dir.exists():
            shutil.rmtree(run_dir)
        packed.series[0].tar_path.parent.rename(run_dir)
        series = [
            SeriesTar(s.pseudo_series_uid, s.modality, run_dir / s.tar_path.name, s.instances)
            for s in packed.series
        ]
        self.journal.set_spool_dir(lead.run_id, run_dir)
        model_runs = [
            ModelRun(
                run_id=run.run_id,
                model_name=run.model_name,
                shadow=run.shadow,
                revises_run_id=_run_id(self.journal.revised_run(run)),
                model_version=study.pinned_versions.get(run.model_name),
            )
            for run in runs
        ]
        self.uploader.prepare(
            lead.run_id,
            lead.pseudo_study_uid,
            series,
            self._deid_record(packed.last_result),
            model_runs,
            priority=lead.priority,
        )
        self._reach(runs, EdgeStage.PREPARED)

    def _deid_record(self, result: DeidResult) -> DeidRecord:
        options = self.deidentifier.options
        return DeidRecord(
            table_edition=result.table_edition,
            options=options.option_names(),
            method_codes=list(result.method_codes) or [c for c, _ in options.method_codes()],
        )

    # ---- upload: prepared -> uploading -> uploaded -----------------------------------------

    def upload(self, run_id: str) -> None:
        """Upload the run's study (once for all its model runs) and advance every one of them."""
        run = self.journal.run(run_id)
        assert run is not None
        runs = self.journal.runs_for(run.study_key, run.run_number)
        started = time.monotonic()
        self._reach(runs, EdgeStage.UPLOADING)
        # The upload's objects are journaled under its first run; the others have none.
        sent = sum(self.uploader.upload(r.run_id, stop=self.stop) for r in runs)
        elapsed = time.monotonic() - started
        self._reach(runs, EdgeStage.UPLOADED, detail=f"bytes={sent}")
        for each in runs:
            self.telemetry.audit.record(
                "upload", pseudo_study_uid=each.pseudo_study_uid, run_id=each.run_id,
                destination="s3",
            )  # fmt: skip
            log_stage(
                EdgeStage.UPLOADED,
                run_id=each.run_id,
                pseudo_study_uid=each.pseudo_study_uid,
                name=each.model_name,
                bytes=sent,
                seconds=round(elapsed, 2),
                mib_per_s=round(sent / 1048576 / elapsed, 1) if elapsed > 0 else None,
            )
        self.telemetry.metrics.studies.labels("uploaded").inc()
        self.telemetry.metrics.stage_seconds.labels("upload").observe(elapsed)
        self.intake.mark_forwarded(run.study_key, run.run_number)
        for each in runs:
            if each.spool_dir:
                shutil.rmtree(each.spool_dir, ignore_errors=True)


def _run_id(run: RunRow | None) -> str | None:
    return run.run_id if run is not None else None


def _instance_count(study: CompletedStudy) -> int:
    return sum(len(paths) for paths in study.series.values())


def _study_instance_uid(study: CompletedStudy) -> str:
    """The study's original UID, read from the first spooled instance that names one."""
    for paths in study.series.values():
        for path in paths:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[0x0020000D])
            except (OSError, ValueError, EOFError, InvalidDicomError):
                continue  # an unreadable instance is quarantined by de-identification
            uid = str(header.get("StudyInstanceUID", "") or "")
            if uid:
                return uid
    raise PermanentError("no instance of the study names its StudyInstanceUID")


def _log_quarantine(error: PipelineError) -> None:
    # Quarantined (e.g. burned-in text risk): the instance stays on-prem.
    log_event(
        "quarantined",
        logging.WARNING,
        stage=EdgeStage.DEIDENTIFIED,
        reason=str(getattr(error, "reason", type(error).__name__)),
    )
