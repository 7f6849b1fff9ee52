"""Fan-out on moto: one upload, one run per model, each with its own endpoint and its own fate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from functions.common import bootstrap
from imaging_ai.aws import client
from imaging_ai.contracts import RESULTS_PREFIX, ModelRun, SiteResultMessage, Stage
from imaging_ai.local.provision import provision
from imaging_ai.state import RunKey, RunStateStore
from tests.functions_support import SITE, emulate_inference, model_card, upload_study
from tests.integration.functions.conftest import Stack


def test_each_model_of_a_study_runs_on_its_own_endpoint_and_fails_alone(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two deployed models, each with its own endpoint
    resources = provision([SITE], [model_card("lung-nodule-demo"), model_card("lung-next")])
    monkeypatch.setenv("MODEL_ENDPOINTS", json.dumps(resources.model_endpoints))
    bootstrap.reset()
    stack.watch_endpoints()
    # ... and one upload whose manifest names a run of each, plus one of a model not deployed
    runs = [
        ModelRun(run_id="r1-live", model_name="lung-nodule-demo"),
        ModelRun(run_id="r1-next", model_name="lung-next", shadow=True),
        ModelRun(run_id="r1-gone", model_name="not-deployed"),
    ]
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path, runs=runs)

    # When preprocess handles the manifest
    outcome = stack.preprocess().poll_once()

    # Then each deployed model's run asked its own endpoint, the third run alone FAILED
    assert (outcome.received, outcome.failed) == (1, 0)
    called = {str(c["EndpointName"]): str(c["InputLocation"]) for c in stack.inference_calls}
    assert set(called) == {
        resources.model_endpoints["lung-nodule-demo"],
        resources.model_endpoints["lung-next"],
    }
    store = RunStateStore(client("dynamodb"), resources.state_table)
    state = {
        run.run_id: store.get(RunKey(SITE, study.pseudo_study_uid, run.run_id)) for run in runs
    }
    assert {run_id: s.stage for run_id, s in state.items() if s} == {
        "r1-live": Stage.INFERRING,
        "r1-next": Stage.INFERRING,
        "r1-gone": Stage.FAILED,
    }
    assert state["r1-next"].model_name == "lung-next"  # type: ignore[union-attr]
    assert state["r1-next"].attributes.get("shadow") == "true"  # type: ignore[union-attr]
    (refused,) = [SiteResultMessage.model_validate_json(b) for b in stack.site_messages()]
    assert (refused.kind, refused.run_id) == ("FAILED", "r1-gone")

    # When one model's inference fails and the other's succeeds
    live = called[resources.model_endpoints["lung-nodule-demo"]]
    following = called[resources.model_endpoints["lung-next"]]
    emulate_inference(resources.data_bucket, live, resources.inference_success_topic_arn, study)
    emulate_inference(
        resources.data_bucket, following, resources.inference_error_topic_arn, study,
        fail="ModelError: out of memory",
    )  # fmt: skip
    stack.postprocess().poll_once()

    # Then the live model's results are delivered under its own run, the other run FAILED
    messages = {
        m.run_id: m
        for m in (SiteResultMessage.model_validate_json(b) for b in stack.site_messages())
    }
    assert {run_id: m.kind for run_id, m in messages.items()} == {
        "r1-live": "RESULT_READY",
        "r1-next": "FAILED",
    }
    prefix = f"{RESULTS_PREFIX}{SITE}/{study.pseudo_study_uid}/r1-live/"
    assert all(key.startswith(prefix) for key in messages["r1-live"].result_keys.values())
    reported = store.get(RunKey(SITE, study.pseudo_study_uid, "r1-live"))
    assert reported is not None and reported.stage is Stage.DELIVERED
