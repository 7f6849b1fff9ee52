"""Which runs are STAT, and how the priority travels: manifest key, manifest, endpoint request."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge_forwarder.intake.journal import SeriesSummary
from edge_forwarder.intake.routing import study_priority
from edge_forwarder.intake.settings import RoutingRule
from imaging_ai.contracts import (
    Priority,
    manifest_key,
    parse_manifest_key,
    priority_custom_attributes,
    priority_from_custom_attributes,
)
from imaging_ai.errors import ContractError


def _series(**attrs: str) -> SeriesSummary:
    return SeriesSummary("1.2.3", 0.0, 10, {"Modality": "CT", **attrs})


@pytest.mark.parametrize(
    ("ordered", "expected"),
    [
        ("STAT", Priority.STAT),
        ("stat ", Priority.STAT),  # as a sender may pad or case it
        ("HIGH", Priority.ROUTINE),  # urgent, but not STAT
        ("ROUTINE", Priority.ROUTINE),
        (None, Priority.ROUTINE),
    ],
)
def test_the_order_priority_in_the_header_decides_under_a_routine_rule(
    ordered: str | None, expected: Priority
) -> None:
    rule = RoutingRule(model="m", modality=["CT"])
    attrs = {"RequestedProcedurePriority": ordered} if ordered is not None else {}
    assert study_priority([rule], [_series(), _series(**attrs)]) is expected


def test_a_stat_rule_makes_the_run_stat_whatever_the_header_says() -> None:
    rule = RoutingRule.model_validate({"model": "m", "priority": "stat"})
    assert rule.priority is Priority.STAT
    assert study_priority([rule], [_series(RequestedProcedurePriority="LOW")]) is Priority.STAT


def test_a_study_fanned_out_to_several_models_is_stat_when_any_matched_rule_is() -> None:
    routine = RoutingRule(models=["lung-nodule-demo"], modality=["CT"])
    stat = RoutingRule.model_validate({"models": ["ich-triage"], "priority": "STAT"})
    assert study_priority([routine, stat], [_series()]) is Priority.STAT
    assert study_priority([routine], [_series()]) is Priority.ROUTINE


def test_an_unknown_rule_priority_is_refused_at_load() -> None:
    with pytest.raises(ValidationError):
        RoutingRule.model_validate({"model": "m", "priority": "urgent"})


def test_a_stat_manifest_has_its_own_key_and_both_keys_parse() -> None:
    routine, stat = (manifest_key("site-a", "1.2.3", p) for p in Priority)
    assert routine == "incoming/site-a/1.2.3/manifest.json.enc"
    assert stat == "incoming/site-a/1.2.3/manifest.stat.json.enc"
    assert parse_manifest_key(routine) == parse_manifest_key(stat) == ("site-a", "1.2.3")
    with pytest.raises(ContractError):
        parse_manifest_key("incoming/site-a/1.2.3/manifest.urgent.json.enc")


def test_the_endpoint_request_names_its_priority_and_unknown_ones_are_routine() -> None:
    for priority in Priority:
        assert priority_from_custom_attributes(priority_custom_attributes(priority)) is priority
    assert priority_from_custom_attributes("trace=abc, priority=STAT") is Priority.STAT
    assert priority_from_custom_attributes("priority=urgent") is Priority.ROUTINE
    assert priority_from_custom_attributes("") is Priority.ROUTINE
