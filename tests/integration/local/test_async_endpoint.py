"""The local async endpoint speaks InvokeEndpointAsync to unmodified boto3 and notifies via SNS."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from functions.preprocess.adapters import ModelEndpoints
from imaging_ai.aws import client, reset_clients
from imaging_ai.contracts import Priority, priority_custom_attributes
from imaging_ai.http_handler import QuietHandler
from imaging_ai.local.async_endpoint import AsyncEndpoint, AsyncEndpointConfig

BUCKET = "endpoint-test"


class _Container(QuietHandler):
    """A stand-in container for the emulator's own contract: it reverses bytes, or fails."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body.startswith(b"bad"):
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b"input is not an npz payload")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-npz")
        self.end_headers()
        self.wfile.write(body[::-1])


class _SecondModel(_Container):
    """Another model's container: it answers in upper case."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-npz")
        self.end_headers()
        self.wfile.write(body.upper())


@pytest.fixture
def endpoint(aws: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AsyncEndpoint, str]]:
    container = ThreadingHTTPServer(("127.0.0.1", 0), _Container)
    second = ThreadingHTTPServer(("127.0.0.1", 0), _SecondModel)
    for server in (container, second):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    s3, sns, sqs = client("s3"), client("sns"), client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    queue_url = sqs.create_queue(QueueName="notifications")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    topics = [sns.create_topic(Name=name)["TopicArn"] for name in ("ok", "error")]
    for topic in topics:
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    config = AsyncEndpointConfig(
        endpoint_name="demo",
        inference_url=f"http://127.0.0.1:{container.server_address[1]}",
        s3_output_path=f"s3://{BUCKET}/inference-output",
        s3_failure_path=f"s3://{BUCKET}/inference-failure",
        success_topic_arn=topics[0],
        error_topic_arn=topics[1],
    )
    other = replace(
        config,
        endpoint_name="second",
        inference_url=f"http://127.0.0.1:{second.server_address[1]}",
    )
    emulator = AsyncEndpoint([config, other]).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", emulator.url)
    reset_clients()
    yield emulator, queue_url
    emulator.stop()
    for server in (container, second):
        server.shutdown()
        server.server_close()


def _notification(queue_url: str) -> dict[str, Any]:
    messages = client("sqs").receive_message(QueueUrl=queue_url, WaitTimeSeconds=10)["Messages"]
    return dict(json.loads(json.loads(messages[0]["Body"])["Message"]))


def test_completed_invocation_writes_output_and_notifies(
    endpoint: tuple[AsyncEndpoint, str],
) -> None:
    _, queue_url = endpoint
    # Given an input object in S3
    client("s3").put_object(Bucket=BUCKET, Key="preprocessed/in.npz", Body=b"abc")
    # When boto3 invokes the endpoint asynchronously with an output path extension
    reply = client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName="demo",
        InputLocation=f"s3://{BUCKET}/preprocessed/in.npz",
        ContentType="application/x-npz",
        InferenceId="run-1",
        S3OutputPathExtension="site-a/run-1",
    )
    # Then the reply names the output location and the success topic tells the same place
    assert reply["InferenceId"] == "run-1"
    expected = f"s3://{BUCKET}/inference-output/site-a/run-1/run-1.out"
    assert reply["OutputLocation"] == expected
    notification = _notification(queue_url)
    assert notification["invocationStatus"] == "Completed"
    assert notification["responseParameters"]["outputLocation"] == expected
    output = client("s3").get_object(Bucket=BUCKET, Key="inference-output/site-a/run-1/run-1.out")
    assert output["Body"].read() == b"cba"


def test_container_error_becomes_failed_notification(endpoint: tuple[AsyncEndpoint, str]) -> None:
    _, queue_url = endpoint
    client("s3").put_object(Bucket=BUCKET, Key="preprocessed/bad.npz", Body=b"bad input")
    client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName="demo", InputLocation=f"s3://{BUCKET}/preprocessed/bad.npz"
    )
    notification = _notification(queue_url)
    assert notification["invocationStatus"] == "Failed"
    assert "(400)" in notification["failureReason"]
    assert "not an npz" in notification["failureReason"]


def test_unknown_endpoint_is_refused(endpoint: tuple[AsyncEndpoint, str]) -> None:
    with pytest.raises(client("sagemaker-runtime").exceptions.ValidationError):
        client("sagemaker-runtime").invoke_endpoint_async(
            EndpointName="other", InputLocation=f"s3://{BUCKET}/x"
        )


def test_each_endpoint_sends_its_requests_to_its_own_models_server(
    endpoint: tuple[AsyncEndpoint, str],
) -> None:
    _, queue_url = endpoint
    # Given two endpoints, one per model, each in front of its own container
    client("s3").put_object(Bucket=BUCKET, Key="preprocessed/in.npz", Body=b"abc")
    # When the second model's endpoint is invoked
    client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName="second",
        InputLocation=f"s3://{BUCKET}/preprocessed/in.npz",
        InferenceId="run-2",
    )
    # Then its own container answered, and the notification names that endpoint
    notification = _notification(queue_url)
    assert notification["requestParameters"]["endpointName"] == "second"
    key = notification["responseParameters"]["outputLocation"].split(f"{BUCKET}/", 1)[1]
    assert client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"ABC"


def test_a_stat_request_queued_behind_five_routine_ones_is_served_first(
    endpoint: tuple[AsyncEndpoint, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint whose instance is still starting (it queues, serves nothing yet)
    served: list[str] = []
    held = AsyncEndpoint(
        list(endpoint[0].endpoints.values()),
        on_result=lambda inference_id, _: served.append(inference_id),
    ).start(hold_work=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", held.url)
    reset_clients()
    try:
        client("s3").put_object(Bucket=BUCKET, Key="preprocessed/in.npz", Body=b"abc")
        # ... and five routine requests, then a STAT one, as preprocess sends them
        for number in range(6):
            priority = Priority.STAT if number == 5 else Priority.ROUTINE
            client("sagemaker-runtime").invoke_endpoint_async(
                EndpointName="demo",
                InputLocation=f"s3://{BUCKET}/preprocessed/in.npz",
                InferenceId=f"run-{number}",
                CustomAttributes=priority_custom_attributes(priority),
            )
        # When the instance comes up and works through its queue
        held.release_work()
    finally:
        held.stop()  # the worker ends after every request queued before the stop
    # Then the STAT request was served first, the routine ones in the order they came
    assert served == ["run-5", "run-0", "run-1", "run-2", "run-3", "run-4"]


def test_a_stat_request_is_served_by_the_stat_endpoint_while_the_routine_one_is_busy(
    endpoint: tuple[AsyncEndpoint, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a model with a STAT endpoint besides its routine one (the CDK context's `stat`),
    # preprocess choosing between them, and the routine endpoint's instance held
    routine_config = endpoint[0].endpoints["demo"]
    stat_config = replace(routine_config, endpoint_name="demo-stat")
    served: list[str] = []
    stat_served = threading.Event()

    def on_result(inference_id: str, _: str) -> None:
        served.append(inference_id)
        if inference_id == "run-5":
            stat_served.set()

    held = AsyncEndpoint([routine_config, stat_config], on_result=on_result).start(hold_work=True)
    held.release_work(["demo-stat"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", held.url)
    reset_clients()
    preprocess = ModelEndpoints(
        client("sagemaker-runtime"), {"lung": "demo"}, stat_endpoints={"lung": "demo-stat"}
    )
    try:
        client("s3").put_object(Bucket=BUCKET, Key="preprocessed/in.npz", Body=b"abc")
        # ... busy with five routine requests
        # When a STAT run's request comes last
        queued = [
            preprocess.invoke(
                "lung",
                f"s3://{BUCKET}/preprocessed/in.npz",
                f"run-{number}",
                f"site-a/run-{number}",
                Priority.STAT if number == 5 else Priority.ROUTINE,
            )
            for number in range(6)
        ]
        # Then the STAT endpoint served it while every routine request still waits
        assert [q.endpoint_name for q in queued] == ["demo"] * 5 + ["demo-stat"]
        assert stat_served.wait(timeout=10)
        assert served == ["run-5"]
        held.release_work(["demo"])
    finally:
        held.stop()
    # ... and the routine endpoint, released, served its own five in the order they came
    assert served == ["run-5", "run-0", "run-1", "run-2", "run-3", "run-4"]
