"""Run the annotated studies through the real local pipeline with the model in shadow mode,
and collect each study's outcome and segmentation.

The seam is `ShadowPipeline`: scoring and the report only see `ShadowResult`s. The local
implementation starts the embedded pipeline (moto, the Lambda handlers, the inference
server, the edge forwarder's own process) with the model under validation in shadow mode,
sends the CT series (never the truth) by C-STORE as a modality would, and takes each run's
re-identified SEG from the forwarder's delivery folder, where shadow mode keeps it: the
production path end to end, delivering to no PACS and no EHR.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom

from edge_forwarder.config import load_config
from edge_forwarder.crosswalk import CrosswalkVault
from edge_forwarder.transport.errors import ForwarderError
from edge_forwarder.transport.journal import Journal, RunRow
from edge_forwarder.validation.scoring import Outcome
from edge_forwarder.validation.truth import AnnotatedStudy
from imaging_ai.contracts import SEG_NAME
from imaging_ai.dicom_folder import StudyFolder
from imaging_ai.edge_stage import EdgeStage
from imaging_ai.local.runtime import LocalModel, LocalPipeline

# The study quiet timer: long enough that a loaded machine never splits a study in two.
QUIET_S = 5.0
# Where a shadow run ends: its results kept on the edge, or none.
_ENDED = {
    EdgeStage.SHADOW_STORED: Outcome.ANALYZED,
    EdgeStage.NOT_ANALYZED: Outcome.NOT_ANALYZED,
    EdgeStage.FAILED: Outcome.FAILED,
}


class ValidationError(ForwarderError):
    """The validation run could not finish (a study never ended, the pipeline broke)."""


@dataclass(frozen=True)
class ShadowResult:
    """What the pipeline made of one study: outcome, reason, and its SEG on this machine."""

    study_instance_uid: str
    outcome: Outcome
    reason: str = ""
    segmentation: Path | None = None


class ShadowPipeline(Protocol):
    def run(self, studies: Sequence[AnnotatedStudy]) -> list[ShadowResult]: ...


def _send_folder(study: AnnotatedStudy) -> StudyFolder:
    """The study's CT series only: the annotator's SEG stays here."""
    found = StudyFolder(instances=list(study.series.files))
    found.series[study.series.series_instance_uid] = study.series
    for path in study.series.files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        found.contexts.add((str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID)))
    return found


def _send(pipeline: LocalPipeline, study: AnnotatedStudy, attempts: int = 3) -> None:
    """C-STORE the study; again when the association dropped (an identical resend changes
    nothing on the edge), never when the forwarder refused an instance."""
    for _ in range(attempts):
        report = pipeline.send_folder(_send_folder(study))
        if not report.failed:
            return
        if set(report.failed) != {"association aborted"}:
            break
    raise ValidationError(f"the forwarder did not store the study: {dict(report.failed)}")


@dataclass
class LocalShadowPipeline:
    """The embedded pipeline on loopback, run once for a whole validation set."""

    work_dir: Path
    model_dir: Path
    timeout_s: float = 3600.0
    poll_s: float = 1.0

    def run(self, studies: Sequence[AnnotatedStudy]) -> list[ShadowResult]:
        pipeline = LocalPipeline(
            work_dir=self.work_dir,
            models=(LocalModel(self.model_dir, shadow=True),),
            quiet_seconds=QUIET_S,
            printer=None,
        )
        with pipeline:
            for study in studies:
                _send(pipeline, study)
            config = load_config(self.work_dir / "edge" / "forwarder.toml")
            ended = self._wait(Journal(config.database_path), len(studies))
            vault = CrosswalkVault(config.crosswalk.path, config.crosswalk.key.read())
            try:
                return [self._result(vault, config.deliveries_dir, run) for run in ended]
            finally:
                vault.close()

    def _wait(self, journal: Journal, expected: int) -> list[RunRow]:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            runs = journal.runs()
            if len(runs) >= expected and all(run.stage in _ENDED for run in runs):
                return runs
            time.sleep(self.poll_s)  # the forwarder is another process: poll its journal
        raise ValidationError(f"studies still running after {self.timeout_s:g} s")

    def _result(self, vault: CrosswalkVault, deliveries: Path, run: RunRow) -> ShadowResult:
        identity = vault.study_by_pseudo(run.pseudo_study_uid)
        if identity is None:
            raise ValidationError(f"run {run.run_id} has no crosswalk entry")
        outcome = _ENDED[run.stage]
        segmentation = None
        if outcome is Outcome.ANALYZED:
            segmentation = deliveries / run.run_id / SEG_NAME
            if not segmentation.exists():
                raise ValidationError(f"run {run.run_id} was kept without a SEG")
        return ShadowResult(identity.study_instance_uid, outcome, run.reason or "", segmentation)
