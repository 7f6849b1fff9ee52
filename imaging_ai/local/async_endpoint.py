"""A local SageMaker asynchronous endpoint: the real InvokeEndpointAsync API in front of our server.

moto answers InvokeEndpointAsync with canned data, so the embedded default points
`AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME` here instead. Like SageMaker, this reads the request from
the S3 InputLocation, POSTs it to the inference container's `/invocations`, writes the response
to the endpoint's S3 output path and publishes the async notification to the success or error
SNS topic. Unmodified boto3 code in the preprocess Lambda cannot tell the difference.

One server answers for every endpoint (one per model, and a model's STAT endpoint where it has
one), as the regional sagemaker-runtime API does; each endpoint has its own container server
and its own worker (one instance each), so one endpoint's queue never waits behind another's.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

import requests

from imaging_ai.async_inference import (
    AsyncInferenceNotification,
    AsyncRequestParameters,
    AsyncResponseParameters,
)
from imaging_ai.aws import Credentials, acting_as, client
from imaging_ai.contracts import Priority, priority_from_custom_attributes, priority_rank
from imaging_ai.logs import get_logger

logger = get_logger(__name__)


@dataclass(frozen=True)
class AsyncEndpointConfig:
    """What a SageMaker EndpointConfig's AsyncInferenceConfig would say."""

    endpoint_name: str
    inference_url: str  # base URL of the container's server, e.g. http://127.0.0.1:8080
    s3_output_path: str  # s3://bucket/inference-output
    s3_failure_path: str  # s3://bucket/inference-failure
    success_topic_arn: str
    error_topic_arn: str
    invocation_timeout_s: float = 600.0
    # Credentials of the SageMaker execution role; None: the process's own.
    execution_role: Credentials | None = None


@dataclass(frozen=True)
class _Job:
    endpoint: AsyncEndpointConfig
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str
    content_type: str
    received_time: str
    priority: Priority = Priority.ROUTINE


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError("not an s3:// URI")
    return parsed.netloc, parsed.path.lstrip("/")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# After every queued job: the worker's stop sentinel.
_STOP_RANK = 2


class AsyncEndpoint:
    """The sagemaker-runtime REST protocol over HTTP, plus one worker per endpoint.

    Each endpoint serves its queue STAT first, then in arrival order (the priority rides in
    CustomAttributes; see docs/priority.md for what orders requests in AWS).
    """

    def __init__(
        self,
        endpoints: Sequence[AsyncEndpointConfig],
        host: str = "127.0.0.1",
        port: int = 0,
        on_result: Callable[[str, str], None] | None = None,
    ):
        self.endpoints = {config.endpoint_name: config for config in endpoints}
        self._on_result = on_result  # (inference_id, "Completed" | "Failed"), for timelines
        # Per endpoint, (priority rank, arrival number, job): STAT first, FIFO within a priority.
        self._jobs: dict[str, queue.PriorityQueue[tuple[int, int, _Job | None]]] = {
            name: queue.PriorityQueue() for name in self.endpoints
        }
        self._arrivals = itertools.count()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._http = threading.Thread(target=self._server.serve_forever, name="async-endpoint-http")
        self._workers = {
            name: threading.Thread(target=self._work, args=(jobs,), name=f"async-endpoint-{name}")
            for name, jobs in self._jobs.items()
        }
        self.completed = 0
        self.failed = 0
        self._count_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, *, hold_work: bool = False) -> AsyncEndpoint:
        """Serve requests; `hold_work` queues them until `release_work` (an instance that is
        still starting, as a scaled-to-zero endpoint's first requests wait)."""
        self._http.daemon = True
        self._http.start()
        if not hold_work:
            self.release_work()
        return self

    def release_work(self, endpoint_names: Iterable[str] | None = None) -> None:
        """Start the workers of `endpoint_names` (default: every endpoint's not yet started)."""
        names = self._workers if endpoint_names is None else endpoint_names
        for name in names:
            worker = self._workers[name]
            if worker.ident is None:  # a thread starts once
                worker.daemon = True
                worker.start()

    def stop(self) -> None:
        for jobs in self._jobs.values():
            jobs.put((_STOP_RANK, next(self._arrivals), None))
        self._server.shutdown()
        self._server.server_close()
        for thread in (self._http, *self._workers.values()):
            if thread.is_alive():
                thread.join(timeout=30)

    # -- request side ------------------------------------------------------------------------

    def _accept(
        self, endpoint_name: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        config = self.endpoints.get(endpoint_name)
        if config is None:
            return 400, {}, {"message": f"Endpoint {endpoint_name} not found."}
        input_location = headers.get("x-amzn-sagemaker-inputlocation", "")
        try:
            _split_s3(input_location)
        except ValueError:
            return 400, {}, {"message": "InputLocation must be an s3:// URI"}
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or str(uuid.uuid4())
        extension = headers.get("x-amzn-sagemaker-s3outputpathextension", "").strip("/")
        out_base = config.s3_output_path.rstrip("/")
        fail_base = config.s3_failure_path.rstrip("/")
        if extension:
            out_base, fail_base = f"{out_base}/{extension}", f"{fail_base}/{extension}"
        job = _Job(
            endpoint=config,
            inference_id=inference_id,
            input_location=input_location,
            output_location=f"{out_base}/{inference_id}.out",
            failure_location=f"{fail_base}/{inference_id}-error.out",
            content_type=headers.get("x-amzn-sagemaker-content-type", "application/octet-stream"),
            received_time=_now(),
            priority=priority_from_custom_attributes(
                headers.get("x-amzn-sagemaker-custom-attributes", "")
            ),
        )
        self._jobs[endpoint_name].put((priority_rank(job.priority), next(self._arrivals), job))
        logger.info(
            "async_invocation_queued",
            inference_id=inference_id,
            endpoint=endpoint_name,
            priority=job.priority,
        )
        reply_headers = {
            "X-Amzn-SageMaker-OutputLocation": job.output_location,
            "X-Amzn-SageMaker-FailureLocation": job.failure_location,
        }
        return 202, reply_headers, {"InferenceId": inference_id}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                parts = urlparse(self.path).path.strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if len(parts) != 3 or parts[0] != "endpoints" or parts[2] != "async-invocations":
                    self._reply(404, {}, {"message": "unknown operation"})
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, body = endpoint._accept(unquote(parts[1]), headers)
                self._reply(status, extra, body)

            def _reply(self, status: int, headers: dict[str, str], body: Any) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status >= 400:
                    self.send_header("x-amzn-ErrorType", "ValidationError")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return  # requests are logged by the worker, with fields

        return Handler

    # -- worker side -------------------------------------------------------------------------

    def _work(self, jobs: queue.PriorityQueue[tuple[int, int, _Job | None]]) -> None:
        while (job := jobs.get()[2]) is not None:
            # SageMaker reads inputs, writes outputs and notifies as the execution role.
            with acting_as(job.endpoint.execution_role):
                try:
                    self._run(job)
                except Exception as error:  # every failure must end in a notification
                    self._fail(job, f"InternalFailure: {type(error).__name__}")

    def _run(self, job: _Job) -> None:
        s3 = client("s3")
        bucket, key = _split_s3(job.input_location)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        response = requests.post(
            f"{job.endpoint.inference_url}/invocations",
            data=body,
            headers={"Content-Type": job.content_type},
            timeout=job.endpoint.invocation_timeout_s,
        )
        if response.status_code != HTTPStatus.OK:
            # SageMaker reports the container's own status and message as a ClientError.
            reason = response.text[:512]
            self._fail(
                job,
                f"ClientError: Received client error ({response.status_code}) from primary "
                f'with message "{reason}"',
                response.content,
            )
            return
        out_bucket, out_key = _split_s3(job.output_location)
        s3.put_object(
            Bucket=out_bucket,
            Key=out_key,
            Body=response.content,
            ContentType=response.headers.get("Content-Type", "application/octet-stream"),
        )
        with self._count_lock:
            self.completed += 1
        self._notify(job, "Completed")

    def _fail(self, job: _Job, reason: str, body: bytes = b"") -> None:
        with self._count_lock:
            self.failed += 1
        bucket, key = _split_s3(job.failure_location)
        try:
            client("s3").put_object(Bucket=bucket, Key=key, Body=body or reason.encode())
        finally:
            self._notify(job, "Failed", reason)

    def _notify(self, job: _Job, status: str, reason: str | None = None) -> None:
        notification = AsyncInferenceNotification(
            aws_region=client("sns").meta.region_name,
            event_time=_now(),
            received_time=job.received_time,
            invocation_status="Completed" if status == "Completed" else "Failed",
            failure_reason=reason,
            request_parameters=AsyncRequestParameters(
                content_type=job.content_type,
                endpoint_name=job.endpoint.endpoint_name,
                input_location=job.input_location,
            ),
            response_parameters=AsyncResponseParameters(
                content_type="application/x-npz",
                output_location=job.output_location if status == "Completed" else None,
                failure_location=job.failure_location if status != "Completed" else None,
            ),
            inference_id=job.inference_id,
        )
        topic = (
            job.endpoint.success_topic_arn
            if status == "Completed"
            else job.endpoint.error_topic_arn
        )
        client("sns").publish(
            TopicArn=topic,
            Message=notification.model_dump_json(by_alias=True, exclude_none=True),
        )
        logger.info("async_invocation_ended", inference_id=job.inference_id, status=status)
        if self._on_result:
            self._on_result(job.inference_id, status)
