"""The SageMaker async endpoint as the preprocess service sees it."""

from __future__ import annotations

from typing import Any

MODEL_INPUT_CONTENT_TYPE = "application/x-npz"


class AsyncEndpoint:
    def __init__(self, sagemaker_runtime: Any, endpoint_name: str) -> None:
        self._runtime = sagemaker_runtime
        self.endpoint_name = endpoint_name

    def invoke(self, input_location: str, inference_id: str) -> str:
        """Queue one async inference; returns the S3 location where its output will appear."""
        response = self._runtime.invoke_endpoint_async(
            EndpointName=self.endpoint_name,
            InputLocation=input_location,
            ContentType=MODEL_INPUT_CONTENT_TYPE,
            InferenceId=inference_id,
        )
        return str(response.get("OutputLocation", ""))
