"""Every sample in events/ parses into the typed model its handler or the site reads."""

from __future__ import annotations

import json

import pytest
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

from functions.common.events import (
    InferenceResultRecord,
    ManifestCreatedRecord,
    ObjectCreatedEvent,
    SnsEnvelope,
)
from functions.common.keys import parse_input_location
from imaging_ai.async_inference import AsyncInferenceNotification
from imaging_ai.contracts import SiteResultMessage, parse_manifest_key
from tests.events import load_event


def test_the_manifest_trigger_parses_with_its_key_decoded() -> None:
    # Given the SQS-wrapped EventBridge event for a key S3 URL-encoded
    event = load_event("sqs_eventbridge_s3_manifest_created", site="site-b")
    record = ManifestCreatedRecord.model_validate(event["Records"][0])

    # Then the handler sees the manifest of site-b's study
    site, study = parse_manifest_key(record.body.object_key)
    assert (site, study) == (
        "site-b",
        load_event("eventbridge_s3_manifest_created")["detail"]["object"]["key"].split("/")[2],
    )
    assert record.body.detail.object.etag == "9dd4e461268c8034f5c8564e155c67a6"


def test_an_encoded_key_is_unquoted() -> None:
    event = load_event("eventbridge_s3_manifest_created")
    event["detail"]["object"]["key"] = "incoming/site-a/1.2.3/manifest.json.enc".replace("/", "%2F")
    assert ObjectCreatedEvent.model_validate(event).object_key.endswith("/manifest.json.enc")


@pytest.mark.parametrize(
    ("name", "status"),
    [("sqs_sns_sagemaker_async_success", "Completed"), ("sqs_sns_sagemaker_async_error", "Failed")],
)
def test_inference_notifications_parse_through_sns_and_sqs(name: str, status: str) -> None:
    record = InferenceResultRecord.model_validate(load_event(name, run_id="run-42")["Records"][0])
    notification = record.body.Message
    assert notification.invocation_status == status
    assert parse_input_location(notification.request_parameters.input_location)[2] == "run-42"


def test_the_sns_envelope_and_bare_notifications_parse() -> None:
    envelope = SnsEnvelope.model_validate(load_event("sns_sagemaker_async_success"))
    assert envelope.Message.response_parameters.output_location is not None
    error = AsyncInferenceNotification.model_validate(load_event("sagemaker_async_error"))
    assert error.failure_reason and error.response_parameters.failure_location


def test_the_dead_lettered_trigger_keeps_its_body_and_receive_count() -> None:
    record = SqsRecordModel.model_validate(
        load_event("sqs_dlq_eventbridge_s3_manifest_created")["Records"][0]
    )
    assert int(record.attributes.ApproximateReceiveCount) > 3
    assert json.loads(str(record.body))["detail-type"] == "Object Created"


@pytest.mark.parametrize(
    "name", ["site_result_ready", "site_result_failed", "site_result_not_analyzed"]
)
def test_site_messages_are_site_result_messages(name: str) -> None:
    message = SiteResultMessage.model_validate(load_event(name))
    assert (message.kind in ("FAILED", "NOT_ANALYZED")) == (message.reason is not None)
