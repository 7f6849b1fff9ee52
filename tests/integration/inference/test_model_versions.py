"""One inference server keeps every version of its model and runs the version a request pins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from containers.inference.serve import InferenceService
from imaging_ai.errors import ContractError
from imaging_ai.inference.evaluation import model_input_for
from imaging_ai.inference.network import build_network
from imaging_ai.inference.predictor import PredictorSettings
from imaging_ai.inference.training import write_model_dir
from imaging_ai.model_io import pack_model_input, unpack_model_output
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import make_chest_phantom

pytestmark = pytest.mark.integration


def test_a_request_pinned_to_an_old_version_is_run_by_that_version(tmp_path: Path) -> None:
    # Given a model's registry folder: the shipped 1.0.0 and a newer, untrained 1.1.0
    registry = tmp_path / "lung-nodule-demo"
    shutil.copytree(DEMO_MODEL_DIR, registry / "1.0.0")
    torch.manual_seed(11)
    write_model_dir(build_network(), registry / "1.1.0", {"steps": 0})
    card_path = registry / "1.1.0" / "model.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "version": "1.1.0"}))
    service = InferenceService(registry, PredictorSettings(device="cpu", cpu_threads=2))
    assert service.health()[1]["versions"] == ["1.0.0", "1.1.0"]
    phantom = make_chest_phantom(
        3001, shape=(32, 160, 160), spacing_mm=(1.5, 1.2, 1.2), nodule_count=3
    )
    image, meta = model_input_for(phantom, service.predictor_for(None).card)
    # When one request is pinned to 1.0.0 and another names no version
    _, pinned = unpack_model_output(
        service.invoke(pack_model_input(image, meta.model_copy(update={"model_version": "1.0.0"})))
    )
    _, newest = unpack_model_output(service.invoke(pack_model_input(image, meta)))
    # Then each result names the version (and weights) that made it, and the pinned one is
    # the shipped model's answer
    shipped = json.loads((DEMO_MODEL_DIR / "model.json").read_text())
    assert (pinned.model_version, pinned.weights_sha256) == ("1.0.0", shipped["weights_sha256"])
    assert pinned.findings, "the shipped model finds the phantom's nodules"
    assert newest.model_version == "1.1.0" and newest.weights_sha256 != pinned.weights_sha256
    # And a version the server does not keep is refused (HTTP 400), naming what it keeps
    unknown = meta.model_copy(update={"model_version": "0.9.0"})
    with pytest.raises(ContractError, match=r"not kept here .*1\.0\.0"):
        service.invoke(pack_model_input(image, unknown))
