"""Start and stop a moto server on 127.0.0.1 standing in for the AWS services the pipeline uses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from imaging_ai.errors import PipelineError
from imaging_ai.local.moto_iam import DENIALS_ENV
from imaging_ai.local.processes import end_process

# moto accepts any credentials; fixed fake ones keep a developer's real profile out of reach.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    endpoint_url: str
    process: subprocess.Popen[bytes]
    # IAM enforcement on: every call must be signed by a known principal and be allowed.
    iam: bool = False
    denials_log: Path | None = None

    def environment(self) -> dict[str, str]:
        """Variables that point every boto3 client of a process at this server."""
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}

    def reset(self) -> None:
        """Forget every resource (IAM users and roles too)."""
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()
        if self.denials_log is not None:
            self.denials_log.write_text("")

    def allow_unauthenticated(self, calls: int) -> None:
        """Let the next `calls` requests through unsigned (then enforcement is back): how
        the first administrator is made, as an account's root user would."""
        requests.post(
            f"{self.endpoint_url}/moto-api/reset-auth", data=str(calls).encode(), timeout=10
        ).raise_for_status()

    def denials(self) -> list[dict[str, str]]:
        """Every call the server refused since the last reset: action, resource, principal."""
        if self.denials_log is None or not self.denials_log.exists():
            return []
        lines = self.denials_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        end_process(self.process)


def start_moto_server(
    port: int | None = None,
    log_path: Path | None = None,
    timeout_s: float = 30.0,
    *,
    iam: bool = False,
    denials_log: Path | None = None,
) -> MotoServer:
    """Start `moto_server` on loopback and wait until it answers.

    With `iam`, the server enforces IAM from its first request (INITIAL_NO_AUTH_ACTION_COUNT=0)
    through `imaging_ai.local.moto_iam`, which also names KMS, DynamoDB and SNS resources and
    logs each denial to `denials_log`.
    """
    port = port or free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    module = "imaging_ai.local.moto_iam" if iam else "moto.server"
    environment = {**os.environ, **FAKE_CREDENTIALS}
    if iam:
        environment["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        if denials_log is not None:
            denials_log.write_text("")
            environment[DENIALS_ENV] = str(denials_log)
    process = subprocess.Popen(
        [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment,
    )
    server = MotoServer(
        endpoint_url=f"http://127.0.0.1:{port}",
        process=process,
        iam=iam,
        denials_log=denials_log if iam else None,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PipelineError(f"moto server exited with code {process.returncode}")
        try:
            requests.get(f"{server.endpoint_url}/moto-api/", timeout=1)
            return server
        except requests.ConnectionError:
            time.sleep(0.1)
    server.stop()
    raise PipelineError(f"moto server did not answer on port {port} within {timeout_s} s")


@contextmanager
def moto_server(port: int | None = None) -> Iterator[MotoServer]:
    server = start_moto_server(port)
    try:
        yield server
    finally:
        server.stop()
