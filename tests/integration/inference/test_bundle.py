"""The demo lung model as a MONAI Model Zoo bundle: same findings; the README's commands work."""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from imaging_ai.inference.bundle import STATE_DICT_FILE, TORCHSCRIPT_FILE, export_bundle
from imaging_ai.inference.evaluation import model_input_for
from imaging_ai.inference.predictor import Predictor, PredictorSettings
from imaging_ai.model_registry import DEMO_MODEL_DIR
from imaging_ai.synthetic import make_chest_phantom
from tests.integration.inference.conftest import REPO, start_server, stop_server

pytestmark = pytest.mark.integration

CPU = PredictorSettings(device="cpu", cpu_threads=2)
README = REPO / "containers" / "inference" / "README.md"


def _readme_commands() -> list[list[str]]:
    text = README.read_text()
    block = text.split("# bundle-commands-start\n", 1)[1].split("# bundle-commands-end", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_lung_model_as_a_bundle_gives_identical_findings(tmp_path: Path) -> None:
    # Given the shipped model, and the same network exported in the Zoo layout, once as
    # TorchScript and once as a state dict for the bundle's network_def
    bundle_ts = tmp_path / "bundle-ts"
    export_bundle(DEMO_MODEL_DIR, bundle_ts)
    bundle_pt = tmp_path / "bundle-pt"
    shutil.copytree(bundle_ts, bundle_pt)
    (bundle_ts / STATE_DICT_FILE).unlink()
    (bundle_pt / TORCHSCRIPT_FILE).unlink()
    native = Predictor(DEMO_MODEL_DIR, CPU)
    # Small enough for one sliding window: the windows are the model's ROI whatever the study.
    phantom = make_chest_phantom(
        3001, shape=(32, 160, 160), spacing_mm=(1.5, 1.2, 1.2), nodule_count=3
    )
    image, meta = model_input_for(phantom, native.card)
    # When each reads the same held-out study
    labels, expected = native.predict(image, meta)
    assert expected.findings, "the study must hold findings for the comparison to mean anything"
    for bundle in (bundle_ts, bundle_pt):
        bundle_labels, output = Predictor(bundle, CPU).predict(image, meta)
        # Then the findings and the label map are the same, under the same name and version
        assert output.findings == expected.findings, bundle.name
        np.testing.assert_array_equal(bundle_labels, labels)
        assert (output.model_name, output.model_version) == (
            expected.model_name,
            expected.model_version,
        )
        # The TorchScript is the shipped file itself: the same weights hash names it.
        if bundle is bundle_ts:
            assert output.weights_sha256 == expected.weights_sha256


def test_the_readme_bundle_commands_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the README's commands, run from the repository root with their output paths in tmp
    monkeypatch.chdir(REPO)
    commands = _readme_commands()
    assert [command[2] for command in commands] == [
        "imaging_ai.inference.bundle",
        "imaging_ai.inference.bundle",
        "containers.inference.serve",
        "containers.inference.deploy",
    ]
    printed: list[str] = []
    for command in commands:
        argv = [
            str(tmp_path / arg) if arg.startswith(("bundles/", "dist/")) else arg
            for arg in command[3:]
        ]
        if command[2] == "containers.inference.serve":
            # The server blocks: run it as the container does, on a free port.
            server = start_server(Path(argv[argv.index("--model-dir") + 1]))
            try:
                ping = requests.get(f"{server.url}/ping", timeout=30).json()
            finally:
                stop_server(server)
            continue
        # When each of the others runs
        importlib.import_module(command[2]).main(argv)
        printed.append(capsys.readouterr().out)
    # Then the bundle maps onto the shipped card, serves, and packages
    shipped = json.loads((DEMO_MODEL_DIR / "model.json").read_text())
    card = json.loads(printed[1])
    assert (card["name"], card["version"], card["labels"]) == (
        shipped["name"],
        shipped["version"],
        shipped["labels"],
    )
    assert ping["status"] == "healthy" and ping["weights_sha256"] == shipped["weights_sha256"]
    packaged = json.loads(printed[2])
    assert packaged["dry_run"] and (tmp_path / "dist" / "model.tar.gz").is_file()
