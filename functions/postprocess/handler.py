"""Postprocess Lambda entry point: SQS batch of SNS inference notifications → service."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.common.batch import sqs_batch_handler
from functions.common.bootstrap import adapters, lease_seconds, once
from functions.common.events import InferenceResultRecord
from functions.common.observability import tracer
from functions.common.settings import CommonSettings
from functions.postprocess.results import warm_up
from functions.postprocess.service import PostprocessService

warm_up()  # Lambda's INIT phase: the first event builds results as fast as the next ones


@once
def service() -> PostprocessService:
    return PostprocessService(**adapters(CommonSettings()))


@tracer.capture_method
def record_handler(record: InferenceResultRecord, lambda_context: LambdaContext) -> str:
    return service().handle(record.body.Message, lease_s=lease_seconds(lambda_context)).value


lambda_handler = sqs_batch_handler(InferenceResultRecord, record_handler)
