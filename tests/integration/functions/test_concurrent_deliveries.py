"""Concurrent copies of one trigger (threads, as parallel Lambda instances) do the work once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from imaging_ai.aws import client
from imaging_ai.contracts import RESULT_NAMES, SiteResultMessage, Stage
from imaging_ai.lambda_stages import lambda_stage
from imaging_ai.local.dispatcher import BatchOutcome, SqsDispatcher
from imaging_ai.state import RunKey, RunStateStore
from tests.functions_support import SITE, upload_study
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


def test_a_second_delivery_inside_the_invoke_window_does_not_invoke_again(
    stack: Stack, tmp_path: Path
) -> None:
    # Given the manifest event twice on the queue, and the first delivery parked inside
    # InvokeEndpointAsync: the run is PREPROCESSED and not yet INFERRING
    resources = stack.resources
    study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
    _copy_message(resources.preprocess.url, copies=2)
    held, release = threading.Event(), threading.Event()
    _hold_first_call("InvokeEndpointAsync", held, release)
    dispatcher = _one_at_a_time(stack, resources.preprocess.url, "preprocess")
    outcomes: list[BatchOutcome] = []
    first = _poll_in_thread(dispatcher, outcomes)
    assert held.wait(WAIT_S)

    # When the second copy is delivered concurrently, in that window
    second = _poll_in_thread(dispatcher, outcomes)
    second.join(WAIT_S)
    release.set()
    first.join(WAIT_S)
    _drain(dispatcher)  # the copy that was told "busy" comes back and finds INFERRING

    # Then the endpoint was called exactly once and the run is INFERRING
    assert len(stack.inference_calls) == 1
    assert sorted(o.failed for o in outcomes) == [0, 1]  # the second was retried, not dropped
    store = RunStateStore(client("dynamodb"), resources.state_table)
    run = store.get(RunKey(SITE, study.pseudo_study_uid, study.run_id))
    assert run is not None and run.stage is Stage.INFERRING


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
    held, release = threading.Event(), threading.Event()
    _hold_first_call("SendMessage", held, release)
    dispatcher = _one_at_a_time(stack, resources.postprocess.url, "postprocess")

    # When the other two copies are delivered concurrently in that window, then retries drain
    outcomes: list[BatchOutcome] = []
    first = _poll_in_thread(dispatcher, outcomes)
    assert held.wait(WAIT_S)
    others = [_poll_in_thread(dispatcher, outcomes) for _ in range(2)]
    for thread in others:
        thread.join(WAIT_S)
    release.set()
    first.join(WAIT_S)
    _drain(dispatcher)

    # Then one set of result objects was written and the site was told once
    assert sorted(result_writes) == sorted(
        f"results/{SITE}/{study.pseudo_study_uid}/{study.run_id}/{name}.enc"
        for name in RESULT_NAMES
    )
    messages = [SiteResultMessage.model_validate_json(body) for body in stack.site_messages()]
    assert [m.kind for m in messages] == ["RESULT_READY"]
    store = RunStateStore(client("dynamodb"), resources.state_table)
    run = store.get(RunKey(SITE, study.pseudo_study_uid, study.run_id))
    assert run is not None and run.stage is Stage.DELIVERED
