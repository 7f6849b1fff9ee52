"""Preprocess Lambda entry point: SQS batch of manifest Object Created events → service."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.bootstrap import (
    lease_seconds,
    object_store,
    once,
    site_notifier,
    state_store,
)
from functions.common.events import ManifestCreatedRecord
from functions.common.observability import logger, metrics, tracer
from functions.common.settings import PreprocessSettings
from functions.preprocess.adapters import AsyncEndpoint
from functions.preprocess.service import ManifestRef, PreprocessService
from imaging_ai.aws import client


@once
def service() -> PreprocessService:
    settings = PreprocessSettings()
    return PreprocessService(
        store=object_store(settings),
        state=state_store(settings),
        endpoint=AsyncEndpoint(client("sagemaker-runtime"), settings.endpoint_name),
        notifier=site_notifier(settings),
    )


@tracer.capture_method
def record_handler(record: ManifestCreatedRecord, lambda_context: LambdaContext) -> str:
    event = record.body
    ref = ManifestRef(event.detail.bucket.name, event.object_key, event.detail.object.etag)
    return service().handle(ref, lease_s=lease_seconds(lambda_context)).value


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    # A processor per invocation: it holds the batch's outcomes, so sharing one module-level
    # processor would mix the results of concurrent invocations in one process (local runtime).
    processor = BatchProcessor(event_type=EventType.SQS, model=ManifestCreatedRecord)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
