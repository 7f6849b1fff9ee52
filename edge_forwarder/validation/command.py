"""`edge-forwarder validate`: annotated studies in, a validation report (HTML + PDF) out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from edge_forwarder.validation.report import ValidationReport, score_studies, write_report
from edge_forwarder.validation.runner import LocalShadowPipeline, ShadowPipeline
from edge_forwarder.validation.scoring import Outcome, StudyScore
from edge_forwarder.validation.truth import AnnotatedStudy, load_annotated_studies
from imaging_ai.drift import Baseline, RunProfile, baseline_from
from imaging_ai.model_card import load_model_card

SUMMARY_NAME = "validation-summary.json"
# The drift monitor's reference: acquisition and output distributions only, no identifier,
# so unlike the report it may leave the site (`python -m imaging_ai.drift baseline`).
BASELINE_NAME = "drift-baseline.json"


def drift_baseline(
    model_name: str, studies: Sequence[AnnotatedStudy], scores: Sequence[StudyScore]
) -> Baseline:
    """What production is compared with: each validated study's acquisition and output."""
    by_study = {score.study_instance_uid: score for score in scores}
    profiles: list[RunProfile] = []
    for study in studies:
        score = by_study[study.study_instance_uid]
        if score.outcome is Outcome.NOT_ANALYZED:
            profiles.append(RunProfile(not_analyzed=True))
        elif score.outcome is Outcome.ANALYZED:
            profiles.append(
                study.acquisition.model_copy(
                    update={
                        "findings": len(score.findings),
                        "finding_volumes_mm3": [round(f.volume_mm3, 1) for f in score.findings],
                    }
                )
            )
    return baseline_from(model_name, profiles)


def validate(
    folder: Path, model_dir: Path, out_dir: Path, pipeline: ShadowPipeline | None = None
) -> ValidationReport:
    """Score the model in `model_dir` on the annotated studies under `folder` and write the
    report into `out_dir` (the embedded pipeline works under `out_dir/pipeline`)."""
    card = load_model_card(model_dir)
    studies = load_annotated_studies(folder)
    runner = pipeline or LocalShadowPipeline(out_dir / "pipeline", model_dir)
    results = runner.run(studies)
    report = ValidationReport.of(card, score_studies(studies, results))
    write_report(report, out_dir)
    (out_dir / SUMMARY_NAME).write_text(json.dumps(report.summary(), indent=2))
    baseline = drift_baseline(card.name, studies, report.scores)
    (out_dir / BASELINE_NAME).write_text(baseline.model_dump_json(indent=2))
    return report
