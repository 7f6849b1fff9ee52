"""Head phantoms with known bleeds, and the per-study triage flag read off probabilities."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from imaging_ai.inference.hemorrhage import HEMORRHAGE_RECIPE, MODEL_NAME, TRIAGE, model_card
from imaging_ai.inference.predictor import answer_triage, triage_probability
from imaging_ai.inference.training import TrainingCase, train
from imaging_ai.model_card import load_model_card
from imaging_ai.model_io import VolumeGeometry
from imaging_ai.synthetic_head import BLEED_HU, BRAIN_HU, make_head_ct_phantom

SMALL = {"shape": (48, 96, 96), "spacing_mm": (3.0, 2.4, 2.4)}
MODEL_GRID = VolumeGeometry(shape=(40, 60, 60), spacing_mm=(1.5, 1.5, 1.5), origin_mm=(0, 0, 0))


def test_bleeds_have_the_volume_and_density_the_truth_states() -> None:
    # Given a phantom asked for two bleeds of 5-20 mL
    head = make_head_ct_phantom(5, bleed_count=2, bleed_volume_ml=(5.0, 20.0), **SMALL)
    voxel_mm3 = float(np.prod(head.phantom.spacing_mm))
    # Then each bleed's stated volume is its voxels in the mask, near the volume asked for
    assert len(head.bleeds) == 2
    for bleed in head.bleeds:
        voxels = int(np.count_nonzero(head.bleed_mask == bleed.index))
        assert bleed.volume_mm3 == pytest.approx(voxels * voxel_mm3)
        assert 3.0 <= bleed.volume_ml <= 30.0
        assert BLEED_HU[0] <= bleed.hu <= BLEED_HU[1]
        # ... and the bleed is denser than the brain around it (mean over its voxels)
        inside = head.phantom.hu[head.bleed_mask == bleed.index].mean()
        assert inside > BRAIN_HU[1] + 10


def test_a_phantom_without_bleeds_has_an_empty_mask_and_is_reproducible() -> None:
    first = make_head_ct_phantom(8, bleed_count=0, **SMALL)
    again = make_head_ct_phantom(8, bleed_count=0, **SMALL)
    assert first.bleeds == [] and not first.bleed_mask.any()
    assert np.array_equal(first.phantom.hu, again.phantom.hu)


def _probabilities(blob_voxels: int, inside: float) -> np.ndarray:
    foreground = np.full(MODEL_GRID.shape, 0.02, dtype=np.float32)
    foreground.reshape(-1)[:blob_voxels] = inside
    return np.stack([1.0 - foreground, foreground])


def test_a_confident_millilitre_flags_the_study_as_critical() -> None:
    # Given a 1 mL region (296 voxels of 3.375 mm3) the model is 90 % sure of
    card = model_card("ab" * 32)
    triage = answer_triage(card, _probabilities(296, 0.9), MODEL_GRID)
    # Then the study is flagged, critical because the card declares hemorrhage critical
    assert triage is not None
    assert triage.suspected and triage.critical
    assert triage.probability == pytest.approx(0.9)


def test_a_few_confident_voxels_do_not_flag_a_study() -> None:
    # Given 20 confident voxels (0.07 mL), below the flag's 0.5 mL
    probability = triage_probability(_probabilities(20, 0.99)[1], 3.375, TRIAGE)
    card = model_card("ab" * 32)
    triage = answer_triage(card, _probabilities(20, 0.99), MODEL_GRID)
    # Then the study probability is diluted below the threshold
    assert probability < TRIAGE.threshold
    assert triage is not None and not triage.suspected and not triage.critical


def _tiny_case(seed: int) -> TrainingCase:
    head = make_head_ct_phantom(seed, bleed_count=1, bleed_volume_ml=(2.0, 4.0), **SMALL)
    image = head.phantom.hu.astype(np.float32)[:40, :40, :40]
    fraction = (head.bleed_mask > 0).astype(np.float32)[:40, :40, :40]
    return TrainingCase(image, fraction, [(20, 20, 20)])


@pytest.mark.slow
def test_two_training_steps_write_a_loadable_model_directory(tmp_path: Path) -> None:
    # Given the hemorrhage recipe with tiny phantoms (the real ones take seconds each)
    recipe = dataclasses.replace(HEMORRHAGE_RECIPE, make_case=_tiny_case, patch_size=(16, 16, 16))
    # When it trains for two steps
    summary = train(tmp_path, max_steps=2, max_minutes=5.0, patches_per_case=4, threads=1,
                    recipe=recipe)  # fmt: skip
    # Then the model directory holds weights its card names, with the triage flag and the
    # critical finding declared, and a record of the training's time
    card = load_model_card(tmp_path)
    assert card.name == MODEL_NAME and card.triage == TRIAGE
    assert card.is_critical(TRIAGE.finding) and card.not_for_clinical_use
    assert summary["steps"] == 2 and "cpu_minutes" in summary
    assert json.loads((tmp_path / "model.json").read_text())["training"]["steps"] == 2
