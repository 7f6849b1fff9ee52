"""The local endpoints' names: one per model, and a STAT one only for a deployed model."""

from __future__ import annotations

import pytest

from imaging_ai.local.provision import model_endpoint_name, provision, stat_endpoint_name
from imaging_ai.model_card import ModelCard
from tests.functions_support import model_card


def test_a_models_stat_endpoint_is_its_own_endpoint_named_after_it() -> None:
    # Given a model name, as SageMaker endpoint names allow it, and one they do not
    for name in ("lung-nodule-demo", "a.b" * 21):  # the longest names are hashed
        # Then its STAT endpoint is named apart from its endpoint, within SageMaker's 63
        routine, stat = model_endpoint_name(name), stat_endpoint_name(name)
        assert routine != stat and len(stat) <= 63
    assert stat_endpoint_name("lung-nodule-demo") == "imaging-ai-lung-nodule-demo-stat"


@pytest.mark.parametrize(
    ("cards", "stat_models"),
    [
        ([model_card("lung")], ["head"]),  # no such model deployed
        ([model_card("lung"), model_card("lung-stat")], ["lung"]),  # a model named like it
    ],
)
def test_a_stat_endpoint_that_cannot_be_told_apart_is_refused(
    cards: list[ModelCard], stat_models: list[str]
) -> None:
    # When the runtime is provisioned with it, Then it is refused before anything is made
    with pytest.raises(ValueError, match="a STAT endpoint needs a deployed model"):
        provision(["site-a"], cards, stat_endpoint_models=stat_models)
