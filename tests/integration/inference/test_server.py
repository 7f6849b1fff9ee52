"""The inference server speaks the SageMaker container contract over real HTTP."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from imaging_ai.inference.evaluation import model_input_for
from imaging_ai.model_card import load_model_card
from imaging_ai.model_io import pack_model_input, unpack_model_output
from imaging_ai.synthetic import make_chest_phantom
from tests.integration.inference.conftest import (
    DEMO_MODEL_DIR,
    RunningServer,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration
NPZ = {"Content-Type": "application/x-npz"}


@pytest.fixture(scope="module")
def small_request() -> tuple[bytes, tuple[int, int, int]]:
    """A cropped chest phantom with one 12 mm nodule, as preprocessing would send it."""
    phantom = make_chest_phantom(
        2001,
        shape=(48, 300, 420),
        spacing_mm=(1.5, 0.8, 0.8),
        nodule_count=1,
        nodule_diameters_mm=(12.0, 12.0),
    )
    card = load_model_card(DEMO_MODEL_DIR)
    image, meta = model_input_for(phantom, card, seed=2001)
    return pack_model_input(image, meta), phantom.hu.shape


def test_ping_reports_a_healthy_demo_model(demo_server: RunningServer) -> None:
    response = requests.get(f"{demo_server.url}/ping", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "lung-nodule-demo" and body["not_for_clinical_use"] is True


def test_an_invocation_returns_source_grid_labels_and_findings(
    demo_server: RunningServer, small_request: tuple[bytes, tuple[int, int, int]]
) -> None:
    # Given a model-grid image of a study with one nodule
    payload, source_shape = small_request
    # When it is POSTed to /invocations
    response = requests.post(
        f"{demo_server.url}/invocations", data=payload, headers=NPZ, timeout=120
    )
    # Then the answer is an npz label map on the SOURCE grid with the model's identity
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-npz"
    labels, meta = unpack_model_output(response.content)
    assert labels.shape == source_shape
    card = load_model_card(DEMO_MODEL_DIR)
    assert (meta.model_name, meta.model_version, meta.weights_sha256) == (
        card.name,
        card.version,
        card.weights_sha256,
    )
    assert meta.device == "cpu"
    for finding in meta.findings:
        assert finding.volume_mm3 >= card.labels[0].min_volume_mm3
        assert labels[labels == finding.label_value].size >= finding.voxel_count


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"Content-Type": "application/json"}, b"{}", 415, "Content-Type"),
        (NPZ, b"", 400, "empty body"),
        (NPZ, b"not an npz at all", 400, "npz"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(
    demo_server: RunningServer, headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    response = requests.post(
        f"{demo_server.url}/invocations", data=body, headers=headers, timeout=10
    )
    assert response.status_code == status
    assert reason in response.json()["reason"]


def _rewrite_meta(payload: bytes, **changes: object) -> bytes:
    with np.load(io.BytesIO(payload)) as archive:
        image, meta = archive["image"], json.loads(archive["meta"].tobytes())
    meta.update(changes)
    buffer = io.BytesIO()
    np.savez(buffer, image=image, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return buffer.getvalue()


def test_a_request_for_another_model_or_spacing_is_refused(
    demo_server: RunningServer, small_request: tuple[bytes, tuple[int, int, int]]
) -> None:
    payload, _ = small_request
    other_model = _rewrite_meta(payload, model_name="someone-elses-model")
    response = requests.post(
        f"{demo_server.url}/invocations", data=other_model, headers=NPZ, timeout=10
    )
    assert response.status_code == 400 and "someone-elses-model" in response.json()["reason"]

    with np.load(io.BytesIO(payload)) as archive:
        geometry = json.loads(archive["meta"].tobytes())["model_geometry"]
    wrong_spacing = _rewrite_meta(
        payload, model_geometry={**geometry, "spacing_mm": [3.0, 3.0, 3.0]}
    )
    response = requests.post(
        f"{demo_server.url}/invocations", data=wrong_spacing, headers=NPZ, timeout=10
    )
    assert response.status_code == 400 and "spacing" in response.json()["reason"]


def test_unknown_paths_are_404(demo_server: RunningServer) -> None:
    assert requests.get(f"{demo_server.url}/metrics", timeout=10).status_code == 404


def test_a_model_that_fails_to_load_makes_ping_fail(tmp_path: Path) -> None:
    # Given a model directory whose weights no longer match model.json's SHA-256
    broken = tmp_path / "model"
    shutil.copytree(DEMO_MODEL_DIR, broken)
    (broken / "model.ts").write_bytes(b"tampered")
    # When the server starts on it
    server = start_server(broken)
    try:
        # Then /ping fails with the reason and invocations are refused as unavailable
        ping = requests.get(f"{server.url}/ping", timeout=10)
        assert ping.status_code == 500 and "SHA-256" in ping.json()["reason"]
        response = requests.post(f"{server.url}/invocations", data=b"x", headers=NPZ, timeout=10)
        assert response.status_code == 503
    finally:
        stop_server(server)
