"""Fixtures of the function tests: a provisioned moto stack and the function environment."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from functions.common import bootstrap
from imaging_ai.aws import client
from imaging_ai.lambda_stages import lambda_stage
from imaging_ai.local.dispatcher import SqsDispatcher
from imaging_ai.local.moto_server import MotoServer
from imaging_ai.local.provision import LocalResources, provision
from tests.functions_support import (
    SITE,
    UploadedStudy,
    chest_model_card,
    emulate_inference,
    model_card,
    upload_study,
)


def _dispatcher(stage: str, queue_url: str) -> SqsDispatcher:
    return SqsDispatcher(queue_url, lambda_stage(stage).handler, stage, wait_time_s=0)


@dataclass
class Stack:
    resources: LocalResources
    inference_calls: list[dict[str, object]] = field(default_factory=list)

    def preprocess(self) -> SqsDispatcher:
        return _dispatcher("preprocess", self.resources.preprocess.url)

    def postprocess(self) -> SqsDispatcher:
        return _dispatcher("postprocess", self.resources.postprocess.url)

    def failure(self, dlq_url: str) -> SqsDispatcher:
        return _dispatcher("failure", dlq_url)

    def inferred(self, tmp_path: Path, fail: str | None = None) -> UploadedStudy:
        """A study uploaded, preprocessed, and answered by the endpoint (an error with `fail`)."""
        resources = self.resources
        study = upload_study(resources.data_bucket, resources.kms_key_arn, tmp_path)
        self.preprocess().poll_once()
        topic = (
            resources.inference_error_topic_arn if fail else resources.inference_success_topic_arn
        )
        location = str(self.inference_calls[0]["InputLocation"])
        emulate_inference(resources.data_bucket, location, topic, study, fail=fail)
        return study

    def watch_endpoints(self) -> None:
        """Record each InvokeEndpointAsync call (moto answers it with canned data)."""

        def count(params: dict[str, object], **_: object) -> None:
            self.inference_calls.append(params)

        client("sagemaker-runtime").meta.events.register(
            "provide-client-params.sagemaker-runtime.InvokeEndpointAsync", count
        )

    def site_messages(self) -> list[str]:
        sqs = client("sqs")
        bodies: list[str] = []
        while True:
            batch = sqs.receive_message(
                QueueUrl=self.resources.site_results_queues[SITE], MaxNumberOfMessages=10
            ).get("Messages", [])
            if not batch:
                return bodies
            for message in batch:
                bodies.append(message["Body"])
                sqs.delete_message(
                    QueueUrl=self.resources.site_results_queues[SITE],
                    ReceiptHandle=message["ReceiptHandle"],
                )


@pytest.fixture
def stack(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Given every resource provisioned on moto and the functions' environment set."""
    resources = provision([SITE], [model_card(), chest_model_card()])
    for name, value in resources.function_environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    bootstrap.reset()
    result = Stack(resources)
    result.watch_endpoints()
    yield result
    bootstrap.reset()
