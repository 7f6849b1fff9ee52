"""The SageMaker async endpoints as the preprocess service sees them: one per model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imaging_ai.contracts import Priority, priority_custom_attributes
from imaging_ai.errors import ContractError

MODEL_INPUT_CONTENT_TYPE = "application/x-npz"


class ModelEndpoints:
    def __init__(self, sagemaker_runtime: Any, endpoints: Mapping[str, str]) -> None:
        self._runtime = sagemaker_runtime
        self.endpoints = dict(endpoints)  # model name -> endpoint name (the deployment's)

    def invoke(
        self,
        model_name: str,
        input_location: str,
        inference_id: str,
        output_path_extension: str,
        priority: Priority = Priority.ROUTINE,
    ) -> str:
        """Queue one async inference on the model's endpoint; returns the S3 location where
        its output will appear.

        `output_path_extension` puts the output under the endpoint's S3 output path plus the
        run's own prefix (`inference-output/{site}/{study}/{run}/`), as the key contract says.
        The run's priority rides in CustomAttributes: the local endpoint serves STAT first
        (docs/priority.md says what orders requests in AWS).
        Raises ContractError when no endpoint of this deployment serves the model.
        """
        endpoint_name = self.endpoints.get(model_name)
        if endpoint_name is None:
            raise ContractError(f"no endpoint of this deployment serves model {model_name!r}")
        response = self._runtime.invoke_endpoint_async(
            EndpointName=endpoint_name,
            InputLocation=input_location,
            ContentType=MODEL_INPUT_CONTENT_TYPE,
            InferenceId=inference_id,
            S3OutputPathExtension=output_path_extension,
            CustomAttributes=priority_custom_attributes(priority),
        )
        return str(response.get("OutputLocation", ""))
