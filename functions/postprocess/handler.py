"""Postprocess Lambda entry point: SQS batch of SNS inference notifications → service."""

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
from functions.common.events import InferenceResultRecord
from functions.common.observability import logger, metrics, tracer
from functions.common.settings import CommonSettings
from functions.postprocess.results import warm_up
from functions.postprocess.service import PostprocessService

warm_up()  # Lambda's INIT phase: the first event builds results as fast as the next ones


@once
def service() -> PostprocessService:
    settings = CommonSettings()
    return PostprocessService(
        store=object_store(settings), state=state_store(settings), notifier=site_notifier(settings)
    )


@tracer.capture_method
def record_handler(record: InferenceResultRecord, lambda_context: LambdaContext) -> str:
    return service().handle(record.body.Message, lease_s=lease_seconds(lambda_context)).value


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    # A processor per invocation: it holds the batch's outcomes, so sharing one module-level
    # processor would mix the results of concurrent invocations in one process (local runtime).
    processor = BatchProcessor(event_type=EventType.SQS, model=InferenceResultRecord)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
