"""Routing rules: a study goes to every model a matching rule names, each model once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge_forwarder.intake.journal import SeriesSummary
from edge_forwarder.intake.routing import choose_models
from edge_forwarder.intake.settings import RoutingRule


def _series(**attrs: str) -> SeriesSummary:
    return SeriesSummary(series_uid="1.2.3", last_at=0.0, count=120, attrs=attrs)


def test_a_study_matching_several_rules_goes_to_every_model_they_name_once() -> None:
    # Given a chest rule naming two models, a CT rule naming one of them again and a third,
    # and an MR rule
    rules = [
        RoutingRule.model_validate(
            {"models": ["lung-nodule", "lung-next"], "modality": ["CT"], "body_part": ["CHEST"]}
        ),
        RoutingRule.model_validate({"models": ["lung-nodule", "ct-qa"], "modality": ["CT"]}),
        RoutingRule.model_validate({"model": "brain-mr", "modality": ["MR"]}),
    ]
    # When a chest CT is routed
    chosen = choose_models(rules, [_series(Modality="CT", BodyPartExamined="CHEST")])
    # Then it goes to each model of both matching rules, once, in rule order
    assert chosen == [(0, "lung-nodule"), (0, "lung-next"), (1, "ct-qa")]
    # ... and a study no rule matches goes nowhere
    assert choose_models(rules, [_series(Modality="US")]) == []


def test_model_names_one_model_and_models_several() -> None:
    assert RoutingRule.model_validate({"model": "a"}).models == ["a"]
    assert RoutingRule.model_validate({"models": ["a", "b"]}).models == ["a", "b"]


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"model": "a", "models": ["b"]}, "`model` or `models`, not both"),
        ({"models": ["a", "a"]}, "names each model once"),
        ({"models": []}, "at least 1 item"),
        ({"models": ["../etc"]}, "should match pattern"),
        ({"modality": ["CT"]}, "models\n  Field required"),
    ],
)
def test_a_rule_must_name_its_models_plainly(rule: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RoutingRule.model_validate(rule)
    assert problem in str(caught.value)
