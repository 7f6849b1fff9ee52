"""The forwarder's default model names the model the repository ships."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from edge_forwarder.config import AwsSection
from edge_forwarder.intake import IntakeSettings

ROOT = Path(__file__).resolve().parents[3]


def test_every_default_names_the_shipped_model(tmp_path: Path) -> None:
    # Given the model the inference container ships
    shipped = json.loads((ROOT / "containers/inference/model/model.json").read_text())["name"]
    # Then the intake's default route, the AWS section's default and the example config name it
    assert [
        rule.model for rule in IntakeSettings(spool_dir=tmp_path, allow_any_sender=True).routing
    ] == [shipped]
    assert AwsSection.model_fields["model_name"].default == shipped
    example = tomllib.loads((ROOT / "edge_forwarder/example-config.toml").read_text())
    assert example["aws"]["model_name"] == shipped
