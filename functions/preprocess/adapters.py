"""The SageMaker async endpoints as the preprocess service sees them: one per model, and a
STAT one for the models that have it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imaging_ai.contracts import Priority, priority_custom_attributes
from imaging_ai.errors import ContractError

MODEL_INPUT_CONTENT_TYPE = "application/x-npz"


@dataclass(frozen=True)
class QueuedInference:
    """Where an async inference was queued and where its output will appear."""

    endpoint_name: str
    output_location: str


class ModelEndpoints:
    def __init__(
        self,
        sagemaker_runtime: Any,
        endpoints: Mapping[str, str],
        stat_endpoints: Mapping[str, str] | None = None,
    ) -> None:
        self._runtime = sagemaker_runtime
        self.endpoints = dict(endpoints)  # model name -> endpoint name (the deployment's)
        # model name -> the endpoint only STAT runs use, for the models that have one
        self.stat_endpoints = dict(stat_endpoints or {})

    def endpoint_for(self, model_name: str, priority: Priority) -> str:
        """A STAT run's model endpoint is its STAT one where the model has it; otherwise (and
        for every routine run) the model's endpoint. Raises ContractError when no endpoint of
        this deployment serves the model."""
        if priority is Priority.STAT and model_name in self.stat_endpoints:
            return self.stat_endpoints[model_name]
        endpoint_name = self.endpoints.get(model_name)
        if endpoint_name is None:
            raise ContractError(f"no endpoint of this deployment serves model {model_name!r}")
        return endpoint_name

    def invoke(
        self,
        model_name: str,
        input_location: str,
        inference_id: str,
        output_path_extension: str,
        priority: Priority = Priority.ROUTINE,
    ) -> QueuedInference:
        """Queue one async inference on the run's endpoint (`endpoint_for`); returns that
        endpoint and the S3 location where its output will appear.

        `output_path_extension` puts the output under the endpoint's S3 output path plus the
        run's own prefix (`inference-output/{site}/{study}/{run}/`), as the key contract says.
        The run's priority also rides in CustomAttributes: an endpoint that serves both (the
        routine one, when the model has no STAT endpoint) takes STAT first locally
        (docs/priority.md says what orders requests in AWS).
        """
        endpoint_name = self.endpoint_for(model_name, priority)
        response = self._runtime.invoke_endpoint_async(
            EndpointName=endpoint_name,
            InputLocation=input_location,
            ContentType=MODEL_INPUT_CONTENT_TYPE,
            InferenceId=inference_id,
            S3OutputPathExtension=output_path_extension,
            CustomAttributes=priority_custom_attributes(priority),
        )
        return QueuedInference(endpoint_name, str(response.get("OutputLocation", "")))
