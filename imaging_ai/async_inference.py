"""The SageMaker asynchronous-inference notification that SNS carries to postprocessing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AsyncRequestParameters(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    content_type: str | None = Field(default=None, alias="contentType")
    endpoint_name: str = Field(alias="endpointName")
    input_location: str = Field(alias="inputLocation")


class AsyncResponseParameters(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    content_type: str | None = Field(default=None, alias="contentType")
    output_location: str | None = Field(default=None, alias="outputLocation")
    failure_location: str | None = Field(default=None, alias="failureLocation")


class AsyncInferenceNotification(BaseModel):
    """Body of the SNS message SageMaker publishes when an async invocation ends."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")
    aws_region: str = Field(alias="awsRegion")
    event_time: str = Field(alias="eventTime")
    received_time: str | None = Field(default=None, alias="receivedTime")
    invocation_status: Literal["Completed", "Failed"] = Field(alias="invocationStatus")
    failure_reason: str | None = Field(default=None, alias="failureReason")
    request_parameters: AsyncRequestParameters = Field(alias="requestParameters")
    response_parameters: AsyncResponseParameters = Field(
        default_factory=AsyncResponseParameters, alias="responseParameters"
    )
    inference_id: str = Field(alias="inferenceId")
    event_version: str = Field(default="1.0", alias="eventVersion")
    event_source: str = Field(default="aws:sagemaker", alias="eventSource")
    event_name: str = Field(default="InferenceResult", alias="eventName")
