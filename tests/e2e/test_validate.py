"""`edge-forwarder validate` through the real embedded pipeline on two annotated studies."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_forwarder.validation.command import validate
from edge_forwarder.validation.report import HTML_NAME, PDF_NAME
from edge_forwarder.validation.scoring import Outcome
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import ScannerProfile, write_ct_study, write_truth_segmentation

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_validate_runs_the_pipeline_and_scores_its_segmentation(tmp_path: Path) -> None:
    from functions.common import bootstrap

    bootstrap.reset()  # the handlers' cached clients must point at this run's moto
    studies = tmp_path / "studies"
    # Given a chest CT in the model's intended use with its truth as a SEG (as Slicer exports)
    inside = write_ct_study(studies / "inside", seed=424242, shape=(64, 256, 256),
                            spacing_mm=(2.0, 1.4, 1.4), nodule_count=2)  # fmt: skip
    truth = write_truth_segmentation(inside, studies / "truth.dcm")
    # and a 5 mm study the model must not analyze (its slices are thicker than 3 mm)
    thick = write_ct_study(studies / "thick", seed=7, shape=(16, 256, 256),
                           spacing_mm=(5.0, 1.4, 1.4), nodule_count=1,
                           scanner=ScannerProfile(model_name="THICK SCANNER"))  # fmt: skip
    write_truth_segmentation(thick, studies / "thick-truth.dcm")
    # When the site validates the demo model on them
    report = validate(studies, DEMO_MODEL_DIR, tmp_path / "report")
    bootstrap.reset()
    # Then the truth SEG the generator wrote is valid DICOM (dciodvfy: errors exit non-zero)
    if shutil.which("dciodvfy"):
        checked = subprocess.run(["dciodvfy", str(truth)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr[-2000:]
    # and the thick study is reported as not analyzed, with the pipeline's reason
    outcomes = {s.study_instance_uid: s for s in report.scores}
    assert outcomes[thick.study_instance_uid].outcome is Outcome.NOT_ANALYZED
    assert "thick" in outcomes[thick.study_instance_uid].reason.lower()
    # and the analyzed study's nodules are matched and segmented as the demo model does
    analyzed = outcomes[inside.study_instance_uid]
    assert analyzed.outcome is Outcome.ANALYZED, analyzed.reason
    assert report.headline["sensitivity"] == 1.0
    assert report.headline["false_positives_per_study"] == 0.0
    assert analyzed.dice is not None and analyzed.dice > 0.6
    assert (tmp_path / "report" / HTML_NAME).exists()
    assert (tmp_path / "report" / PDF_NAME).exists()
    if os.environ.get("WRITE_DOCS_SAMPLES"):  # docs/sample-validation-report.pdf is this one
        shutil.copy(tmp_path / "report" / PDF_NAME, DOCS / "sample-validation-report.pdf")
