"""Run the annotated studies through the real local pipeline without touching the site's
PACS or EHR, and collect each study's outcome and segmentation.

The seam is `ShadowPipeline`: scoring and the report only see `ShadowResult`s. The local
implementation starts the embedded pipeline (moto, the Lambda handlers, the inference
server, the edge forwarder's own process) with the model under validation, sends the CT
series (never the truth) by C-STORE as a modality would, and takes each study's SEG from
the pipeline's own sandbox PACS: the production path end to end, delivering nowhere real.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
import requests

from edge_forwarder.config import load_config
from edge_forwarder.crosswalk import CrosswalkVault
from edge_forwarder.transport.errors import ForwarderError
from edge_forwarder.transport.journal import Journal
from edge_forwarder.validation.scoring import Outcome
from edge_forwarder.validation.truth import AnnotatedStudy
from imaging_ai.dicom_folder import StudyFolder
from imaging_ai.edge_stage import EdgeStage
from imaging_ai.local.runtime import LocalPipeline

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# The study quiet timer: long enough that a loaded machine never splits a study in two.
QUIET_S = 5.0
# Where an edge run has ended for validation: results delivered to the sandbox, or none.
_ENDED = {
    EdgeStage.DELIVERED: Outcome.ANALYZED,
    EdgeStage.NOT_ANALYZED: Outcome.NOT_ANALYZED,
    EdgeStage.FAILED: Outcome.FAILED,
    EdgeStage.DEAD_LETTER_PACS: Outcome.FAILED,
    EdgeStage.DEAD_LETTER_EHR: Outcome.FAILED,
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
    timeout_s: float = 1800.0
    poll_s: float = 1.0

    def run(self, studies: Sequence[AnnotatedStudy]) -> list[ShadowResult]:
        pipeline = LocalPipeline(
            work_dir=self.work_dir, model_dir=self.model_dir, quiet_seconds=QUIET_S, printer=None
        )
        with pipeline:
            for study in studies:
                _send(pipeline, study)
            config = load_config(self.work_dir / "edge" / "forwarder.toml")
            journal = Journal(config.database_path)
            ended = self._wait(journal, len(studies))
            vault = CrosswalkVault(config.crosswalk.path, config.crosswalk.key.read())
            try:
                return [self._result(pipeline, vault, row) for row in ended]
            finally:
                vault.close()

    def _wait(self, journal: Journal, expected: int) -> list[tuple[str, str, EdgeStage, str]]:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            runs = journal.runs()
            done = [
                (r.run_id, r.pseudo_study_uid, r.stage, r.reason or "")
                for r in runs
                if r.stage in _ENDED
            ]
            if len(runs) >= expected and len(done) == len(runs):
                return done
            time.sleep(self.poll_s)  # the forwarder is another process: poll its journal
        raise ValidationError(f"studies still running after {self.timeout_s:g} s")

    def _result(
        self, pipeline: LocalPipeline, vault: CrosswalkVault, row: tuple[str, str, EdgeStage, str]
    ) -> ShadowResult:
        run_id, pseudo_study_uid, stage, reason = row
        identity = vault.study_by_pseudo(pseudo_study_uid)
        if identity is None:
            raise ValidationError(f"run {run_id} has no crosswalk entry")
        outcome = _ENDED[stage]
        segmentation = None
        if outcome is Outcome.ANALYZED:
            segmentation = self._fetch_segmentation(pipeline, identity.study_instance_uid, run_id)
        return ShadowResult(identity.study_instance_uid, outcome, reason, segmentation)

    def _fetch_segmentation(self, pipeline: LocalPipeline, study_uid: str, run_id: str) -> Path:
        assert pipeline.pacs is not None
        for instance in pipeline.pacs.study_instances(study_uid):
            if instance["Tags"].get("SOPClassUID") == SEGMENTATION_STORAGE:
                response = requests.get(
                    f"{pipeline.pacs.rest_url}/instances/{instance['ID']}/file", timeout=30
                )
                response.raise_for_status()
                path = self.work_dir / "results" / f"{run_id}-seg.dcm"
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                path.write_bytes(response.content)
                return path
        raise ValidationError(f"run {run_id} was delivered without a SEG")
