"""A STAT study reaches preprocess through its own queue and asks the endpoint as STAT."""

from __future__ import annotations

from pathlib import Path

import pytest

from functions.common import bootstrap
from imaging_ai.aws import client
from imaging_ai.contracts import Priority
from imaging_ai.lambda_stages import lambda_stage
from imaging_ai.local.dispatcher import SqsDispatcher
from imaging_ai.local.provision import LocalResources, provision
from imaging_ai.state import RunKey, RunStateStore
from tests.functions_support import SITE, chest_model_card, model_card, upload_study
from tests.integration.functions.conftest import Stack


def _preprocess_mapping(resources: LocalResources) -> SqsDispatcher:
    """Preprocess's event source mappings as the local runtime drives them: STAT queue first."""
    return SqsDispatcher(
        resources.preprocess.url,
        lambda_stage("preprocess").handler,
        "preprocess",
        wait_time_s=0,
        priority_queue_url=resources.preprocess_stat.url,
    )


def test_a_stat_study_is_preprocessed_from_the_stat_queue_and_invokes_as_stat(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a STAT study uploaded by the edge (its manifest under the STAT commit marker)
    resources = stack.resources
    study = upload_study(
        resources.data_bucket, resources.kms_key_arn, tmp_path, priority=Priority.STAT
    )
    # When preprocess's event source mapping polls (STAT queue first, as in the local runtime)
    mapping = _preprocess_mapping(resources)
    outcome = mapping.poll_once()
    # Then the study came from the STAT queue, and the endpoint request says STAT
    assert (outcome.received, outcome.succeeded) == (1, 1)
    (call,) = stack.inference_calls
    assert call["CustomAttributes"] == "priority=STAT"
    # ... and the run's state records it (not PHI: status and metrics may show it)
    run = RunStateStore(client("dynamodb"), resources.state_table).get(
        RunKey(SITE, study.pseudo_study_uid, study.run_id)
    )
    assert run is not None and run.attributes["priority"] == "STAT"


def test_a_stat_run_goes_to_its_models_stat_endpoint_and_a_routine_run_to_the_routine_one(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the model deployed with a STAT endpoint too (the CDK context's `stat`)
    resources = provision(
        [SITE], [model_card(), chest_model_card()], stat_endpoint_models=["lung-nodule-demo"]
    )
    for name, value in resources.function_environment().items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    stack.watch_endpoints()
    # ... and a routine study, then a STAT one, uploaded by the edge
    routine = upload_study(
        resources.data_bucket, resources.kms_key_arn, tmp_path / "routine", run_id="run-routine"
    )
    stat = upload_study(
        resources.data_bucket,
        resources.kms_key_arn,
        tmp_path / "stat",
        run_id="run-stat",
        priority=Priority.STAT,
    )
    # When preprocess's event source mapping polls until both are done (STAT queue first)
    mapping = _preprocess_mapping(resources)
    assert [mapping.poll_once().succeeded for _ in range(2)] == [1, 1]
    # Then the STAT run was sent to the model's STAT endpoint, the routine one to its own
    endpoints = (
        resources.model_endpoints["lung-nodule-demo"],
        resources.stat_model_endpoints["lung-nodule-demo"],
    )
    assert [call["EndpointName"] for call in stack.inference_calls] == [endpoints[1], endpoints[0]]
    # ... and each run's state records which endpoint serves it
    state = RunStateStore(client("dynamodb"), resources.state_table)
    recorded = [
        run.attributes["endpoint_name"]
        for study in (stat, routine)
        if (run := state.get(RunKey(SITE, study.pseudo_study_uid, study.run_id))) is not None
    ]
    assert recorded == [endpoints[1], endpoints[0]]
