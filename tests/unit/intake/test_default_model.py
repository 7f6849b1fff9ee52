"""The forwarder's default model names the model the repository ships."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from edge_forwarder.intake import IntakeSettings
from edge_forwarder.intake.journal import SeriesSummary
from edge_forwarder.intake.routing import choose_models
from edge_forwarder.intake.settings import RoutingRule
from imaging_ai.model_registry import DEMO_MODEL, DEMO_MODEL_DIR, ModelRegistry

ROOT = Path(__file__).resolve().parents[3]


def test_every_default_names_the_shipped_model(tmp_path: Path) -> None:
    # Given the model the repository's registry ships
    shipped = ModelRegistry().get(DEMO_MODEL).card.name
    # Then the intake's default route and every rule of the example config name it
    assert [
        rule.models for rule in IntakeSettings(spool_dir=tmp_path, allow_any_sender=True).routing
    ] == [[shipped]]
    example = tomllib.loads((ROOT / "edge_forwarder/example-config.toml").read_text())
    rules = [RoutingRule.model_validate(r) for r in example["intake"]["routing"]]
    assert rules and all(rule.models == [shipped] for rule in rules)


def test_the_example_config_routes_only_what_the_model_is_meant_for() -> None:
    # Given the shipped model's intended use and the example config's routes
    card = json.loads((DEMO_MODEL_DIR / "model.json").read_text())
    accepted = set(card["intended_use"]["body_part_examined"])
    example = tomllib.loads((ROOT / "edge_forwarder/example-config.toml").read_text())
    rules = [RoutingRule.model_validate(r) for r in example["intake"]["routing"]]

    # Then a chest CT is routed by body part or by description, a head CT is not
    chest = _series(BodyPartExamined="CHEST", SeriesDescription="AXIAL 1.25")
    described = _series(BodyPartExamined="", SeriesDescription="CT THORAX W/O")
    head = _series(BodyPartExamined="HEAD", SeriesDescription="HEAD W/O 5MM")
    assert choose_models(rules, [chest]) == [(0, card["name"])]
    assert choose_models(rules, [described]) == [(1, card["name"])]
    assert choose_models(rules, [head]) == []
    # And each route asks for what the model's intended use declares
    for rule in rules:
        assert set(rule.body_part or ()) <= accepted
        assert rule.series_description in (None, card["intended_use"]["series_description"])


def _series(**attrs: str) -> SeriesSummary:
    return SeriesSummary(
        series_uid="1.2.3", last_at=0.0, count=120, attrs={"Modality": "CT", **attrs}
    )
