"""Preprocess Lambda entry point: SQS batch of manifest Object Created events → service."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.batch import sqs_batch_handler
from functions.common.bootstrap import adapters, lease_seconds, once
from functions.common.events import ManifestCreatedRecord
from functions.common.observability import tracer
from functions.common.settings import PreprocessSettings
from functions.preprocess.adapters import ModelEndpoints
from functions.preprocess.service import ManifestRef, PreprocessService
from imaging_ai.aws import client


@once
def service() -> PreprocessService:
    settings = PreprocessSettings()
    endpoint = ModelEndpoints(
        client("sagemaker-runtime"), settings.model_endpoints, settings.stat_model_endpoints
    )
    return PreprocessService(endpoint=endpoint, **adapters(settings))


@tracer.capture_method
def record_handler(record: ManifestCreatedRecord, lambda_context: LambdaContext) -> str:
    event = record.body
    ref = ManifestRef(event.detail.bucket.name, event.object_key, event.detail.object.etag)
    outcomes = service().handle(ref, lease_s=lease_seconds(lambda_context))
    return ",".join(f"{run_id}={outcome.value}" for run_id, outcome in outcomes.items())


lambda_handler = sqs_batch_handler(ManifestCreatedRecord, record_handler)
