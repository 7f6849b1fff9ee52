"""Concurrent copies of one trigger (threads, as parallel Lambda instances) do the work once."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging_ai.aws import client
from imaging_ai.contracts import RESULT_NAMES, SiteResultMessage, Stage
from imaging_ai.lambda_stages import lambda_stage
from imaging_ai.local.dispatcher import BatchOutcome, SqsDispatcher
from tests.functions_support import SITE, run_stage, upload_study
from tests.integration.functions.conftest import Stack

WAIT_S = 60.0


def _one_at_a_time(stack: Stack, queue_url: str, stage: str) -> SqsDispatcher:
    # batch_size=1 as the stack's event source mappings, so each copy is its own invocation
    return SqsDispatcher(queue_url, lambda_stage(stage).handler, stage, batch_size=1, wait_time_s=0)


def _copy_message(queue_url: str, copies: int) -> None:
    """Turn the one message on the queue into `copies` identical ones (at-least-once)."""
    sqs = client("sqs")
    (original,) = sqs.receive_message(QueueUrl=queue_url)["Messages"]
    for _ in range(copies - 1):
        sqs.send_message(QueueUrl=queue_url, MessageBody=original["Body"])
    sqs.change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=original["ReceiptHandle"], VisibilityTimeout=0
    )


def _hold_first_call(operation: str, held: threading.Event, release: threading.Event) -> None:
    """Park the first `operation` call until `release`: the other delivery runs in that window."""
    calls: list[int] = []
    service = "sagemaker-runtime" if operation == "InvokeEndpointAsync" else "sqs"

    def park(**_: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            held.set()
            release.wait(WAIT_S)

    client(service).meta.events.register(f"before-call.{service}.{operation}", park)


def _poll_in_thread(dispatcher: SqsDispatcher, outcomes: list[BatchOutcome]) -> threading.Thread:
    thread = threading.Thread(target=lambda: outcomes.append(dispatcher.poll_once()))
    thread.start()
    return thread


def _drain(dispatcher: SqsDispatcher) -> None:
    while dispatcher.poll_once().received:
        pass


@dataclass
class _ParkedDelivery:
    """The first copy's delivery, on its own thread, parked inside its first call of an
    operation: the window the other copies are delivered in."""

    dispatcher: SqsDispatcher
    release: threading.Event
    first: threading.Thread
    outcomes: list[BatchOutcome]

    def deliver_others(self, copies: int) -> None:
        """Deliver `copies` more concurrently in the window, let the first go on, drain retries."""
        for thread in [_poll_in_thread(self.dispatcher, self.outcomes) for _ in range(copies)]:
            thread.join(WAIT_S)
        self.release.set()
        self.first.join(WAIT_S)
        _drain(self.dispatcher)


def _park_first_delivery(
    stack: Stack, queue_url: str, stage: str, operation: str
) -> _ParkedDelivery:
    held, release = threading.Event(), threading.Event()
    _hold_first_call(operation, held, release)
    dispatcher = _one_at_a_time(stack, queue_url, stage)
    outcomes: list[BatchOutcome] = []
    first = _poll_in_thread(dispatcher, outcomes)
    assert held.wait(WAIT_S)
    return _ParkedDelivery(dispatcher, release, first, outcomes)


def test_a_second_delivery_inside_the_invoke_window_does_not_invoke_again(
    stack: Stack, tmp_path: Path
) -> None:
    # Given the manifest event twice on the queue, and the first delivery parked inside
    # InvokeEndpointAsync: the run is PREPROCESSED and not yet INFERRING
    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
    _copy_message(resources.preprocess.url, copies=2)
    parked = _park_first_delivery(
        stack, resources.preprocess.url, "preprocess", "InvokeEndpointAsync"
    )

    # When the second copy is delivered concurrently, in that window (told "busy", it comes
    # back once the first went on, and finds INFERRING)
    parked.deliver_others(1)

    # Then the endpoint was called exactly once and the run is INFERRING
    assert len(stack.inference_calls) == 1
    # ... and the second copy was retried, not dropped
    assert sorted(o.failed for o in parked.outcomes) == [0, 1]
    assert run_stage(resources.state_table, study) is Stage.INFERRING


def test_three_concurrent_deliveries_of_a_manifest_give_one_inference(
    stack: Stack, tmp_path: Path
) -> None:
    # Given the manifest event three times on the queue
    resources = stack.resources
    upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
    _copy_message(resources.preprocess.url, copies=3)
    dispatcher = _one_at_a_time(stack, resources.preprocess.url, "preprocess")

    # When three invocations take one copy each at the same time, then retries drain
    outcomes: list[BatchOutcome] = []
    for thread in [_poll_in_thread(dispatcher, outcomes) for _ in range(3)]:
        thread.join(WAIT_S)
    _drain(dispatcher)

    # Then exactly one inference was requested
    assert len(stack.inference_calls) == 1


def test_one_success_notification_three_times_concurrently_gives_one_result(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a run waiting on inference and its success notification three times on the queue
    resources = stack.resources
    study = stack.inferred(tmp_path)
    _copy_message(resources.postprocess.url, copies=3)
    result_writes: list[str] = []

    def count_results(params: dict[str, Any], **_: Any) -> None:
        if str(params.get("Key", "")).startswith("results/"):
            result_writes.append(str(params["Key"]))

    client("s3").meta.events.register("provide-client-params.s3.PutObject", count_results)
    # and the first delivery parked as it tells the site (REPORTED, not yet DELIVERED)
    parked = _park_first_delivery(stack, resources.postprocess.url, "postprocess", "SendMessage")

    # When the other two copies are delivered concurrently in that window, then retries drain
    parked.deliver_others(2)

    # Then one set of result objects was written and the site was told once
    assert sorted(result_writes) == sorted(
        f"results/{SITE}/{study.pseudo_study_uid}/{study.run_id}/{name}.enc"
        for name in RESULT_NAMES
    )
    messages = [SiteResultMessage.model_validate_json(body) for body in stack.site_messages()]
    assert [m.kind for m in messages] == ["RESULT_READY"]
    assert run_stage(resources.state_table, study) is Stage.DELIVERED
