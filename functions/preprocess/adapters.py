"""The SageMaker async endpoint as the preprocess service sees it."""

from __future__ import annotations

from typing import Any

from imaging_ai.contracts import Priority, priority_custom_attributes

MODEL_INPUT_CONTENT_TYPE = "application/x-npz"


class AsyncEndpoint:
    def __init__(self, sagemaker_runtime: Any, endpoint_name: str) -> None:
        self._runtime = sagemaker_runtime
        self.endpoint_name = endpoint_name

    def invoke(
        self,
        input_location: str,
        inference_id: str,
        output_path_extension: str,
        priority: Priority = Priority.ROUTINE,
    ) -> str:
        """Queue one async inference; returns the S3 location where its output will appear.

        `output_path_extension` puts the output under the endpoint's S3 output path plus the
        run's own prefix (`inference-output/{site}/{study}/{run}/`), as the key contract says.
        The run's priority rides in CustomAttributes: the local endpoint serves STAT first
        (docs/priority.md says what orders requests in AWS).
        """
        response = self._runtime.invoke_endpoint_async(
            EndpointName=self.endpoint_name,
            InputLocation=input_location,
            ContentType=MODEL_INPUT_CONTENT_TYPE,
            InferenceId=inference_id,
            S3OutputPathExtension=output_path_extension,
            CustomAttributes=priority_custom_attributes(priority),
        )
        return str(response.get("OutputLocation", ""))
