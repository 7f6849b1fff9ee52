"""The predictor: model-directory checks, input checks, determinism, back to the source grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imaging_ai.errors import ContractError
from imaging_ai.inference.grid import model_geometry_for
from imaging_ai.inference.network import build_network
from imaging_ai.inference.predictor import ModelLoadError, Predictor, PredictorSettings
from imaging_ai.inference.training import MODEL_NAME, write_model_dir
from imaging_ai.model_io import ModelInputMeta, VolumeGeometry
from tests.model_io_support import input_meta

SOURCE = VolumeGeometry(shape=(24, 60, 60), spacing_mm=(1.5, 0.7, 0.7), origin_mm=(-20, -20, -18))
CPU = PredictorSettings(device="cpu", cpu_threads=1)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained network in a valid model directory: enough to test the plumbing."""
    import torch

    torch.manual_seed(3)
    model_dir = tmp_path_factory.mktemp("model")
    write_model_dir(build_network(), model_dir, {"steps": 0})
    # A small ROI keeps these tests fast; the card is otherwise the shipped one.
    card = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**card, "roi_size": [16, 32, 32]}))
    return model_dir


def _request(name: str = MODEL_NAME) -> tuple[np.ndarray, ModelInputMeta]:
    model = model_geometry_for(SOURCE, (1.5, 1.5, 1.5))
    hu = np.random.default_rng(5).normal(-850, 15, size=model.shape)
    image = ((np.clip(hu, -1000, 400) + 1000) / 1400).astype(np.float32)  # as preprocessed
    meta = input_meta(
        SOURCE,
        model,
        model_name=name,
        site="unit-site",
        pseudo_study_uid="2.25.1",
        pseudo_series_uid="2.25.2",
        run_id="r1",
    )
    return image, meta


def test_cpu_inference_is_deterministic_and_answers_on_the_source_grid(
    tiny_model_dir: Path,
) -> None:
    predictor = Predictor(tiny_model_dir, CPU)
    image, meta = _request()
    first_labels, first = predictor.predict(image, meta)
    second_labels, _ = predictor.predict(image, meta)
    assert first_labels.shape == SOURCE.shape
    np.testing.assert_array_equal(first_labels, second_labels)
    np.testing.assert_array_equal(predictor.probabilities(image), predictor.probabilities(image))
    assert first.device == "cpu" and first.model_name == MODEL_NAME


def test_weights_that_do_not_match_model_json_are_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.ts").write_bytes(b"not the weights")
    with pytest.raises(ModelLoadError, match="SHA-256"):
        Predictor(broken, CPU)


def test_a_request_for_another_model_or_spacing_is_refused(tiny_model_dir: Path) -> None:
    predictor = Predictor(tiny_model_dir, CPU)
    image, meta = _request(name="other-model")
    with pytest.raises(ContractError, match="other-model"):
        predictor.check_input(image, meta)
    image, meta = _request()
    coarse = meta.model_copy(
        update={
            "model_geometry": meta.model_geometry.model_copy(update={"spacing_mm": (3.0, 3.0, 3.0)})
        }
    )
    with pytest.raises(ContractError, match="spacing"):
        predictor.check_input(image, coarse)


def test_raw_hounsfield_input_is_refused_with_the_window_named(tiny_model_dir: Path) -> None:
    # Given an image that skipped preprocessing's intensity window (raw HU)
    predictor = Predictor(tiny_model_dir, CPU)
    image, meta = _request()
    raw = (image * 1400 - 1000).astype(np.float32)
    # Then the predictor refuses it instead of answering "no findings"
    with pytest.raises(ContractError, match=r"normalized to \[0, 1\]"):
        predictor.check_input(raw, meta)


def test_probabilities_go_back_to_the_source_grid_with_the_right_volume(
    tiny_model_dir: Path,
) -> None:
    # Given model-grid probabilities of a 12 mm sphere (soft at its edge, as a good model gives)
    predictor = Predictor(tiny_model_dir, CPU)
    model = model_geometry_for(SOURCE, (1.5, 1.5, 1.5))
    grids = np.meshgrid(*(np.arange(n) * 1.5 for n in model.shape), indexing="ij")
    centre = (18.0, 21.0, 20.0)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    foreground = np.clip(0.5 - (distance - 6.0) / 1.5, 0.0, 1.0).astype(np.float32)
    probabilities = np.stack([1.0 - foreground, foreground])
    # When they are resampled to the 0.7 mm source grid
    labels = predictor.to_source_labels(probabilities, model, SOURCE)
    # Then the label map holds the sphere at source resolution, volume within 5 %
    volume = labels.sum() * 1.5 * 0.7 * 0.7
    assert abs(volume - np.pi / 6 * 12.0**3) / (np.pi / 6 * 12.0**3) < 0.05
