"""The shipped demo model meets its targets on a small held-out synthetic set."""

from __future__ import annotations

import pytest

from imaging_ai.inference.evaluation import TARGETS, evaluate
from imaging_ai.inference.predictor import Predictor, PredictorSettings
from tests.integration.inference.conftest import DEMO_MODEL_DIR

pytestmark = pytest.mark.integration

# Held out: the CLI's default set is 1000-1019 and training draws from 100000 up.
HELD_OUT_SEEDS = [3001, 3002, 3003]


def test_demo_model_meets_sensitivity_false_positive_and_volume_targets() -> None:
    # Given the shipped model and studies it never saw (cropped in-plane to keep the test fast)
    predictor = Predictor(DEMO_MODEL_DIR, PredictorSettings(device="cpu", cpu_threads=2))
    # When it reads them
    summary, _ = evaluate(
        predictor, HELD_OUT_SEEDS, shape=(64, 400, 400), spacing_mm=(1.5, 0.8, 0.8), nodule_count=3
    )
    # Then it finds the nodules >= 6 mm, adds few false positives and measures volumes well
    assert summary["nodules"] >= 6
    assert summary["sensitivity"] >= TARGETS["sensitivity"], summary
    assert summary["false_positives_per_study"] <= TARGETS["false_positives_per_study"], summary
    assert summary["median_volume_error"] <= TARGETS["median_volume_error"], summary
