"""The Lambda entry point every SQS-fed function shares: a partial-batch response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.observability import logger, metrics, tracer

LambdaHandler = Callable[[dict[str, Any], LambdaContext], PartialItemFailureResponse]


def sqs_batch_handler(
    model: type[SqsRecordModel], record_handler: Callable[..., str]
) -> LambdaHandler:
    """`lambda_handler` for a function fed by SQS: each record of `model` to `record_handler`.

    A failed record is reported back alone (ReportBatchItemFailures), so SQS retries only it.
    """

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
        # A processor per invocation: it holds the batch's outcomes, so sharing one
        # module-level processor would mix the results of concurrent invocations in one
        # process (the local runtime runs every function in one).
        processor = BatchProcessor(event_type=EventType.SQS, model=model)
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    return lambda_handler
