"""Failure Lambda entry point: SQS batches from the preprocess and postprocess DLQs → service."""

from __future__ import annotations

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

from functions.common.batch import sqs_batch_handler
from functions.common.bootstrap import adapters, once
from functions.common.observability import tracer
from functions.common.settings import CommonSettings
from functions.failure.service import FailureService


@once
def service() -> FailureService:
    return FailureService(**adapters(CommonSettings()))


@tracer.capture_method
def record_handler(record: SqsRecordModel) -> str:
    body = record.body if isinstance(record.body, str) else ""
    return service().handle(body, int(record.attributes.ApproximateReceiveCount)).value


lambda_handler = sqs_batch_handler(SqsRecordModel, record_handler)
