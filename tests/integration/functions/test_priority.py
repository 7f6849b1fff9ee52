"""A STAT study reaches preprocess through its own queue and asks the endpoint as STAT."""

from __future__ import annotations

from pathlib import Path

from imaging_ai.aws import client
from imaging_ai.contracts import Priority
from imaging_ai.lambda_stages import lambda_stage
from imaging_ai.local.dispatcher import SqsDispatcher
from imaging_ai.state import RunKey, RunStateStore
from tests.functions_support import SITE, upload_study
from tests.integration.functions.conftest import Stack


def test_a_stat_study_is_preprocessed_from_the_stat_queue_and_invokes_as_stat(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a STAT study uploaded by the edge (its manifest under the STAT commit marker)
    resources = stack.resources
    study = upload_study(
        resources.data_bucket, resources.kms_key_arn, tmp_path, priority=Priority.STAT
    )
    # When preprocess's event source mapping polls (STAT queue first, as in the local runtime)
    mapping = SqsDispatcher(
        resources.preprocess.url,
        lambda_stage("preprocess").handler,
        "preprocess",
        wait_time_s=0,
        priority_queue_url=resources.preprocess_stat.url,
    )
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
