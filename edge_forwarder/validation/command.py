"""`edge-forwarder validate`: annotated studies in, a validation report (HTML + PDF) out."""

from __future__ import annotations

import json
from pathlib import Path

from edge_forwarder.validation.report import ValidationReport, score_studies, write_report
from edge_forwarder.validation.runner import LocalShadowPipeline, ShadowPipeline
from edge_forwarder.validation.truth import load_annotated_studies
from imaging_ai.model_card import load_model_card

SUMMARY_NAME = "validation-summary.json"


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
    return report
