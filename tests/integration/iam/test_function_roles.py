"""Each Lambda handler, and the async endpoint, runs as its own CDK role, and needs no more."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imaging_ai import envelope
from imaging_ai.aws import acting_as, client
from imaging_ai.contracts import SiteResultMessage, Stage, encryption_context
from tests.functions_support import SITE, run_stage, upload_study
from tests.integration.iam.conftest import IamStack, async_endpoint

pytestmark = pytest.mark.integration


def _site_messages(stack: IamStack, site: str = SITE) -> list[SiteResultMessage]:
    """What the site's forwarder receives from its results queue, as the site's role."""
    url = stack.resources.site_results_queues[site]
    with acting_as(stack.site(site)):
        sqs = client("sqs")
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return [SiteResultMessage.model_validate_json(m["Body"]) for m in messages]


def test_a_study_runs_through_preprocess_inference_and_postprocess_each_as_its_role(
    iam_stack: IamStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a study uploaded as the site's role (series objects, then the manifest)
    resources = iam_stack.resources
    with acting_as(iam_stack.site(SITE)):
        study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)

    with async_endpoint(iam_stack, study, monkeypatch) as endpoint:
        # When preprocess runs as its role, the endpoint as the SageMaker execution role,
        # and postprocess as its role
        preprocessed = iam_stack.dispatcher("preprocess", resources.preprocess.url).poll_once()
        postprocess = iam_stack.dispatcher("postprocess", resources.postprocess.url)
        deadline = time.monotonic() + 30
        # The endpoint notifies asynchronously: poll until its notification has been handled.
        while (postprocessed := postprocess.poll_once()).received == 0:
            assert time.monotonic() < deadline, "no inference notification arrived"
            time.sleep(0.1)

    # Then every stage succeeded, and the site, as its role, reads three results it can decrypt
    assert (preprocessed.received, preprocessed.failed) == (1, 0)
    assert (endpoint.completed, endpoint.failed) == (1, 0)
    assert (postprocessed.received, postprocessed.failed) == (1, 0)
    (message,) = _site_messages(iam_stack)
    assert message.kind == "RESULT_READY" and message.run_id == study.run_id
    context = encryption_context(SITE, study.pseudo_study_uid)
    with acting_as(iam_stack.site(SITE)):
        for key in message.result_keys.values():
            body = client("s3").get_object(Bucket=resources.data_bucket, Key=key)["Body"].read()
            assert envelope.decrypt_bytes(body, resources.kms_key_arn, context)
    assert run_stage(resources.state_table, study) is Stage.DELIVERED


def test_a_dead_lettered_manifest_event_becomes_failed_for_the_manifests_run(
    iam_stack: IamStack, tmp_path: Path
) -> None:
    # Given a study whose manifest event was dead-lettered from the preprocess queue
    resources = iam_stack.resources
    with acting_as(iam_stack.site(SITE)):
        study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
    sqs = client("sqs")
    (event,) = sqs.receive_message(QueueUrl=resources.preprocess.url)["Messages"]
    sqs.send_message(QueueUrl=resources.preprocess.dlq_url, MessageBody=event["Body"])
    sqs.delete_message(QueueUrl=resources.preprocess.url, ReceiptHandle=event["ReceiptHandle"])

    # When the failure function drains the DLQ as its role
    outcome = iam_stack.dispatcher("failure", resources.preprocess.dlq_url).poll_once()

    # Then it read the manifest (so it names the manifest's run), recorded FAILED, told the site
    assert (outcome.received, outcome.failed) == (1, 0)
    assert run_stage(resources.state_table, study) is Stage.FAILED
    (message,) = _site_messages(iam_stack)
    assert message.kind == "FAILED" and message.run_id == study.run_id
