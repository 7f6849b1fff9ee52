"""At-least-once delivery, refusals, error notifications and poison messages end visibly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from imaging_ai.aws import client
from imaging_ai.contracts import SiteResultMessage, Stage
from tests.events import load_event
from tests.functions_support import emulate_inference, run_state, upload_study
from tests.integration.functions.conftest import Stack


def _site_messages(stack: Stack) -> list[SiteResultMessage]:
    return [SiteResultMessage.model_validate_json(body) for body in stack.site_messages()]


def _queue_depth(url: str) -> int:
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_one_event_delivered_three_times_gives_one_inference_and_one_result(
    stack: Stack, tmp_path: Path
) -> None:
    # Given the manifest's Object Created event on the queue three times over
    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
    sqs = client("sqs")
    (original,) = sqs.receive_message(QueueUrl=resources.preprocess.url)["Messages"]
    for _ in range(2):
        sqs.send_message(QueueUrl=resources.preprocess.url, MessageBody=original["Body"])
    sqs.change_message_visibility(
        QueueUrl=resources.preprocess.url,
        ReceiptHandle=original["ReceiptHandle"],
        VisibilityTimeout=0,
    )

    # When preprocess drains its queue, and the success notification also arrives three times
    for _ in range(3):
        stack.preprocess().poll_once()
    assert _queue_depth(resources.preprocess.url) == 0
    location = str(stack.inference_calls[0]["InputLocation"])
    for _ in range(3):
        emulate_inference(
            resources.data_bucket, location, resources.inference_success_topic_arn, study
        )
    for _ in range(3):
        stack.postprocess().poll_once()

    # Then the endpoint was called once and the site told once
    assert len(stack.inference_calls) == 1
    assert [m.kind for m in _site_messages(stack)] == ["RESULT_READY"]
    run = run_state(stack.resources.state_table, study)
    assert run is not None and run.stage is Stage.DELIVERED


def test_an_error_notification_records_failed_and_tells_the_site(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a study whose inference fails on the endpoint
    study = stack.inferred(tmp_path, fail="ClientError: model server returned 500")

    # When postprocess reads the error topic's message
    outcome = stack.postprocess().poll_once()

    # Then the run is FAILED with the reason, and the site hears it
    assert (outcome.received, outcome.failed) == (1, 0)
    run = run_state(stack.resources.state_table, study)
    assert run is not None and run.stage is Stage.FAILED and run.failed_from is Stage.INFERRING
    assert run.reason is not None and "model server returned 500" in run.reason
    (message,) = _site_messages(stack)
    assert message.kind == "FAILED" and message.reason == run.reason


def test_instances_without_deidentification_markers_are_refused(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a series whose instances lack PatientIdentityRemoved and the method codes
    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path, markers=False)

    # When preprocess runs
    outcome = stack.preprocess().poll_once()

    # Then nothing reaches the model; the run is FAILED and the site is told why
    assert (outcome.received, outcome.failed) == (1, 0)
    assert stack.inference_calls == []
    run = run_state(stack.resources.state_table, study)
    assert run is not None and run.stage is Stage.FAILED
    assert "PatientIdentityRemoved" in str(run.reason)
    assert [m.kind for m in _site_messages(stack)] == ["FAILED"]


def test_a_series_whose_checksum_differs_from_the_manifest_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path, tamper=True)

    stack.preprocess().poll_once()

    run = run_state(stack.resources.state_table, study)
    assert run is not None and run.stage is Stage.FAILED and "SHA-256" in str(run.reason)
    assert stack.inference_calls == []
    assert [m.kind for m in _site_messages(stack)] == ["FAILED"]


def test_a_poison_message_is_dead_lettered_then_failed_with_a_site_message(
    stack: Stack, tmp_path: Path
) -> None:
    # Given an endpoint that is not there on any attempt (not retried inside botocore)
    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
    attempts: list[Any] = []

    def unreachable(**_: Any) -> None:
        attempts.append(1)
        error = {"Code": "ValidationException", "Message": "Endpoint not found"}
        raise ClientError({"Error": error}, "InvokeEndpointAsync")

    client("sagemaker-runtime").meta.events.register(
        "before-send.sagemaker-runtime.InvokeEndpointAsync", unreachable
    )

    # When preprocess retries until the queue's redrive policy moves the message
    outcomes = [stack.preprocess().poll_once() for _ in range(4)]
    failure = stack.failure(resources.preprocess.dlq_url).poll_once()

    # Then it was tried maxReceiveCount times, dead-lettered, and the run ended FAILED, told
    assert [o.failed for o in outcomes[:3]] == [1, 1, 1] and outcomes[3].received == 0
    assert (failure.received, failure.failed) == (1, 0)
    assert _queue_depth(resources.preprocess.dlq_url) == 0
    run = run_state(stack.resources.state_table, study)
    assert run is not None and run.stage is Stage.FAILED
    assert run.failed_from is Stage.PREPROCESSED  # retries resumed, never rebuilt
    (message,) = _site_messages(stack)
    assert message.kind == "FAILED" and "retries" in str(message.reason)


def test_a_sample_sqs_event_runs_through_the_handler(stack: Stack, tmp_path: Path) -> None:
    # Given the events/ sample of the preprocess trigger, pointed at a real upload
    from functions.preprocess.handler import lambda_handler
    from imaging_ai.local.dispatcher import LambdaContext

    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
    event = load_event(
        "sqs_eventbridge_s3_manifest_created",
        pseudo_study_uid=study.pseudo_study_uid,
        bucket=resources.data_bucket,
    )
    assert json.loads(event["Records"][0]["body"])["detail"]["bucket"]["name"] == "imaging-ai-data"

    # When the handler is invoked directly with it
    response = lambda_handler(event, LambdaContext(function_name="preprocess"))

    # Then the batch succeeds and the run is inferring
    assert response == {"batchItemFailures": []}
    run = run_state(stack.resources.state_table, study)
    assert run is not None and run.stage is Stage.INFERRING
