"""Context `models`: each model deployed on its own endpoint, checked before anything is built."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import App
from imaging_ai_infra.config import ModelDeployment, StatEndpoint, load_stage_config

from tests.infrastructure.conftest import PROD_MODELS

pytestmark = pytest.mark.infrastructure


def _models(context: dict[str, Any]) -> tuple[ModelDeployment, ...]:
    return load_stage_config(App(context={"sites": "site-a", **context}).node).models


def test_models_come_from_context_with_stage_defaults_for_what_they_omit() -> None:
    # Given the example list (JSON text, as `-c models=...` passes it) and a bare prod entry
    example = _models({"models": PROD_MODELS.read_text()})
    bare = _models({"stage": "prod", "models": [{"name": "ich-demo", "version": "0.1.0"}]})
    # Then each model keeps what it names, and the bare one scales 0..4 on the default GPU
    assert [
        (m.name, m.instance_type, m.min_capacity, m.max_capacity, m.scale_to_zero) for m in example
    ] == [
        ("lung-nodule-demo", "ml.g5.xlarge", 0, 4, True),
        ("lung-nodule-shadow", "ml.g4dn.xlarge", 1, 2, False),
        ("head-ct-hemorrhage-demo", "ml.g5.xlarge", 0, 2, True),
    ]
    # ... only the triage model has a STAT endpoint, with its own instance type and capacity
    assert [m.stat for m in example] == [
        None, None, StatEndpoint("ml.g4dn.xlarge", min_capacity=1, max_capacity=2),
    ]  # fmt: skip
    (ich,) = bare
    assert (ich.instance_type, ich.min_capacity, ich.max_capacity, ich.scale_to_zero) == (
        "ml.g5.xlarge", 0, 4, True,
    )  # fmt: skip
    assert ich.artifact is None and ich.artifact_key() == "models/ich-demo/0.1.0/model.tar.gz"
    # ... `stat: true` is one instance of the model's own type, always up
    (triage,) = _models({"models": [{"name": "ich", "version": "1", "stat": True}]})
    assert triage.stat == StatEndpoint("ml.g5.xlarge", min_capacity=1, max_capacity=1)
    # ... and without the context, the demo model is deployed
    assert [(m.name, m.version) for m in _models({})] == [("lung-nodule-demo", "1.0.0")]


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        ([], "non-empty list"),
        ([{"name": "a"}], "a name and a version"),
        ([{"name": "a", "version": "1", "gpu": "x"}], "unknown fields ['gpu']"),
        ([{"name": "a/b", "version": "1"}], "not a model name@version"),
        ([{"name": "a.b", "version": "1"}, {"name": "a-b", "version": "1"}], "its own slug"),
        ([{"name": "a", "version": "1"}, {"name": "a", "version": "2"}], "its own name"),
        ([{"name": "a", "version": "1", "min_capacity": 3, "max_capacity": 2}], "min_capacity"),
        ([{"name": "a", "version": "1", "min_capacity": 1}], "scales to zero exactly when"),
        ([{"name": "a", "version": "1", "stat": {"min_capacity": 0}}], "never scales to zero"),
        ([{"name": "a", "version": "1", "stat": {"gpu": "x"}}], "stat is true or an object"),
    ],
)
def test_a_models_list_that_cannot_be_deployed_is_refused(
    models: list[dict[str, Any]], problem: str
) -> None:
    with pytest.raises(ValueError) as caught:
        _models({"models": json.dumps(models)})
    assert problem in str(caught.value)


def test_the_single_model_settings_that_models_replaced_say_so() -> None:
    with pytest.raises(ValueError, match="context 'model_name' is gone"):
        _models({"model_name": "imaging-ai-demo"})
