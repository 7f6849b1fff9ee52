"""The IAM-enforced tier: the local stack on a moto server that enforces the CDK roles' policies.

Each test gets a fresh server state: a deployer (the only principal with every right, as
CloudFormation has) provisions the resources the local runtime uses, then every role of the
synthesized template is created with its policies and assumed. Code under test runs as its
role; any call moto refuses and the test did not expect fails the test at teardown, even when
the code under test turned the AccessDenied into some other error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError

from functions.common import bootstrap
from imaging_ai import envelope
from imaging_ai.aws import Credentials, reset_clients
from imaging_ai.http_handler import QuietHandler
from imaging_ai.lambda_stages import lambda_stage
from imaging_ai.local.async_endpoint import AsyncEndpoint, AsyncEndpointConfig
from imaging_ai.local.dispatcher import SqsDispatcher
from imaging_ai.local.identities import Identities, create_deployer, create_roles
from imaging_ai.local.moto_server import MotoServer
from imaging_ai.local.provision import LocalResources, provision
from imaging_ai.model_io import pack_model_output, unpack_model_input
from tests.cloud_contract import (
    CONTRACT_SITES,
    SAGEMAKER_ROLE,
    function_role,
    role_specs,
    site_role,
)
from tests.functions_support import UploadedStudy, model_card, true_nodule_output
from tests.integration.transport.conftest import ehr, pacs  # noqa: F401  (the real peers)

pytestmark = pytest.mark.integration


@dataclass
class IamStack:
    server: MotoServer
    resources: LocalResources
    identities: Identities
    expected_denials: list[dict[str, str]] = field(default_factory=list)

    def site(self, site: str) -> Credentials:
        return self.identities.role(site_role(site))

    def function(self, name: str) -> Credentials:
        return self.identities.role(function_role(name))

    @property
    def sagemaker(self) -> Credentials:
        return self.identities.role(SAGEMAKER_ROLE)

    def dispatcher(self, function: str, queue_url: str) -> SqsDispatcher:
        """Lambda's event source mapping for `function`, polling and running as its role."""
        return SqsDispatcher(
            queue_url,
            lambda_stage(function).handler,
            function,
            wait_time_s=0,
            role=self.function(function),
        )

    @contextmanager
    def denied(self, action: str) -> Iterator[None]:
        """The block must fail with AccessDenied, and the server must have refused `action`."""
        seen = len(self.server.denials())
        with pytest.raises(ClientError) as raised:
            yield
        # moto answers SQS's JSON protocol with an XML error, which botocore reads as "403".
        assert "AccessDenied" in str(raised.value), raised.value
        new = self.server.denials()[seen:]
        assert [entry["action"] for entry in new] == [action], new
        self.expected_denials.extend(new)


def _provision(
    server: MotoServer, template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> IamStack:
    server.reset()
    deployer = create_deployer(server)
    for name, value in {**server.environment(), **deployer.environment()}.items():
        monkeypatch.setenv(name, value)
    # The process's own credentials are the deployer's: what the test sets up and inspects.
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    reset_clients()
    envelope.reset_providers()
    bootstrap.reset()
    resources = provision(CONTRACT_SITES, [model_card()])
    identities = create_roles(server, deployer, role_specs(template, resources))
    for name, value in resources.function_environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    return IamStack(server, resources, identities)


def _forget_clients() -> None:
    bootstrap.reset()
    reset_clients()
    envelope.reset_providers()


def _fail_on_unexpected_denials(stack: IamStack, since: int = 0) -> None:
    unexpected = [
        denial for denial in stack.server.denials()[since:] if denial not in stack.expected_denials
    ]
    if unexpected:
        pytest.fail(f"calls were denied by the CDK roles' policies: {unexpected}")


@pytest.fixture
def iam_stack(
    iam_moto_server: MotoServer,
    contract_template: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[IamStack]:
    """Given the local stack provisioned by a deployer, every CDK role created and assumed."""
    stack = _provision(iam_moto_server, contract_template, monkeypatch)
    yield stack
    _forget_clients()
    _fail_on_unexpected_denials(stack)


@pytest.fixture(scope="module")
def _shared_iam_stack(
    iam_moto_server: MotoServer, contract_template: dict[str, Any]
) -> Iterator[IamStack]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        stack = _provision(iam_moto_server, contract_template, monkeypatch)
        yield stack
        _forget_clients()


@pytest.fixture
def iam_probe(_shared_iam_stack: IamStack) -> Iterator[IamStack]:
    """The same stack as `iam_stack`, provisioned once per module: for tests that only probe
    what a role may do and change nothing (creating the nine roles costs seconds)."""
    seen = len(_shared_iam_stack.server.denials())
    yield _shared_iam_stack
    _fail_on_unexpected_denials(_shared_iam_stack, since=seen)


def _container(study: UploadedStudy) -> type[BaseHTTPRequestHandler]:
    """The inference container's /invocations, answering with the study's true nodule."""

    class Container(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            labels, output = true_nodule_output(study, unpack_model_input(body)[1])
            self.reply(200, pack_model_output(labels, output), "application/x-npz")

    return Container


@contextmanager
def async_endpoint(
    stack: IamStack, study: UploadedStudy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AsyncEndpoint]:
    """The local async endpoint acting as the SageMaker execution role."""
    container = ThreadingHTTPServer(("127.0.0.1", 0), _container(study))
    threading.Thread(target=container.serve_forever, daemon=True).start()
    bucket = stack.resources.data_bucket
    endpoint = AsyncEndpoint(
        [
            AsyncEndpointConfig(
                endpoint_name=endpoint_name,
                inference_url=f"http://127.0.0.1:{container.server_address[1]}",
                s3_output_path=f"s3://{bucket}/inference-output",
                s3_failure_path=f"s3://{bucket}/inference-failure",
                success_topic_arn=stack.resources.inference_success_topic_arn,
                error_topic_arn=stack.resources.inference_error_topic_arn,
                execution_role=stack.sagemaker,
            )
            for endpoint_name in stack.resources.model_endpoints.values()
        ]
    ).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", endpoint.url)
    reset_clients()
    try:
        yield endpoint
    finally:
        endpoint.stop()
        container.shutdown()
        container.server_close()
