"""Typed trigger events: S3 Object Created via EventBridge, and SageMaker async results via SNS."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, Json

from imaging_ai.async_inference import AsyncInferenceNotification


class S3ObjectDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    key: str
    size: int | None = None
    # AWS writes "etag"; moto writes "eTag".
    etag: str | None = Field(default=None, validation_alias=AliasChoices("etag", "eTag"))
    version_id: str | None = Field(default=None, validation_alias="version-id")
    sequencer: str | None = None


class S3BucketDetail(BaseModel):
    name: str


class ObjectCreatedDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    bucket: S3BucketDetail
    object: S3ObjectDetail


class ObjectCreatedEvent(BaseModel):
    """EventBridge "Object Created" from S3 (the bucket has EventBridge notifications on)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    id: str
    source: Literal["aws.s3"]
    detail_type: Literal["Object Created"] = Field(alias="detail-type")
    time: datetime
    region: str
    detail: ObjectCreatedDetail

    @property
    def object_key(self) -> str:
        # S3 event keys arrive URL-encoded.
        return unquote_plus(self.detail.object.key)


class ManifestCreatedRecord(SqsRecordModel):
    body: Json[ObjectCreatedEvent]


class SnsEnvelope(BaseModel):
    """What SNS delivers to an SQS subscriber with raw message delivery off."""

    model_config = ConfigDict(extra="allow")
    Type: Literal["Notification"]
    MessageId: str
    TopicArn: str
    Timestamp: datetime
    Message: Json[AsyncInferenceNotification]


class InferenceResultRecord(SqsRecordModel):
    body: Json[SnsEnvelope]
