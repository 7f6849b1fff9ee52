"""Failure Lambda entry point: SQS batches from the preprocess and postprocess DLQs → service."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.bootstrap import object_store, once, site_notifier, state_store
from functions.common.observability import logger, metrics, tracer
from functions.common.settings import CommonSettings
from functions.failure.service import FailureService

processor = BatchProcessor(event_type=EventType.SQS, model=SqsRecordModel)


@once
def service() -> FailureService:
    settings = CommonSettings()
    return FailureService(
        store=object_store(settings), state=state_store(settings), notifier=site_notifier(settings)
    )


@tracer.capture_method
def record_handler(record: SqsRecordModel) -> str:
    body = record.body if isinstance(record.body, str) else ""
    return service().handle(body, int(record.attributes.ApproximateReceiveCount)).value


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
