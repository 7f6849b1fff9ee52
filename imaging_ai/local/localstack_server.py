"""Start and stop LocalStack as a plain host process on 127.0.0.1 (no Docker), the second backend.

LocalStack's own CLI (`localstack start --host`) wants Docker to prepare the host; its runtime
entry point does not: `python -m localstack.runtime.main` with the gateway bound by
GATEWAY_LISTEN. It lives in its own virtualenv (`make localstack-venv`: it pins an older boto3
than ours) and is found through IMAGING_AI_LOCALSTACK_PYTHON or that venv.

DynamoDB is not served by LocalStack here: LocalStack runs Amazon DynamoDB Local (Java),
downloaded on first use, and this machine reaches only PyPI, npm and Debian; its package code
also needs Python >= 3.13 (`threading.Lock | None`). The local runtime points the DynamoDB
endpoint (AWS_ENDPOINT_URL_DYNAMODB) at its moto server instead; docs/local-backends.md lists
this and every other difference found.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from imaging_ai.errors import PipelineError
from imaging_ai.local.moto_server import FAKE_CREDENTIALS, free_port
from imaging_ai.local.processes import end_process

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO_ROOT / ".tools" / "localstack-venv" / "bin" / "python"
PYTHON_ENV = "IMAGING_AI_LOCALSTACK_PYTHON"
# DynamoDB is deliberately absent (see the module docstring).
SERVICES = "s3,sqs,sns,events,kms,sts"


def localstack_python() -> Path:
    python = Path(os.environ.get(PYTHON_ENV) or DEFAULT_PYTHON)
    if not python.is_file():
        raise PipelineError(
            f"LocalStack is not installed at {python}: run `make localstack-venv`"
            f" (or set {PYTHON_ENV} to a Python that has localstack-core)"
        )
    return python


@dataclass
class LocalStackServer:
    endpoint_url: str
    process: subprocess.Popen[bytes]
    started_in_s: float

    def environment(self) -> dict[str, str]:
        """Variables that point every boto3 client of a process at LocalStack."""
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}

    def stop(self) -> None:
        end_process(self.process)


def start_localstack(
    work_dir: Path, log_path: Path | None = None, timeout_s: float = 120.0
) -> LocalStackServer:
    """Start LocalStack on a free loopback port and wait until its services are ready."""
    port = free_port()
    state_dir = work_dir / "localstack"
    state_dir.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        **FAKE_CREDENTIALS,
        # hypercorn: the default twisted gateway needs pyOpenSSL/service_identity versions
        # that clash with the cryptography LocalStack itself pins.
        "GATEWAY_SERVER": "hypercorn",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "SERVICES": SERVICES,
        "EAGER_SERVICE_LOADING": "1",
        "DNS_ADDRESS": "0",  # no DNS server on port 53
        "LOCALSTACK_VOLUME_DIR": str(state_dir),
        "FILESYSTEM_ROOT": str(state_dir),
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",  # no analytics calls home
    }
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    started = time.monotonic()
    process = subprocess.Popen(
        [str(localstack_python()), "-m", "localstack.runtime.main"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=state_dir,
    )
    server = LocalStackServer(f"http://127.0.0.1:{port}", process, 0.0)
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PipelineError(f"LocalStack exited with code {process.returncode}")
        try:
            health = requests.get(f"{server.endpoint_url}/_localstack/health", timeout=1)
            services = health.json().get("services", {})
            if all(services.get(name) in ("available", "running") for name in SERVICES.split(",")):
                server.started_in_s = time.monotonic() - started
                return server
        except (requests.ConnectionError, ValueError):
            pass
        time.sleep(0.2)
    server.stop()
    raise PipelineError(f"LocalStack did not become ready on port {port} within {timeout_s} s")
