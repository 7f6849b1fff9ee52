"""Start and stop a moto server on 127.0.0.1 standing in for the AWS services the pipeline uses."""

from __future__ import annotations

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

    def environment(self) -> dict[str, str]:
        """Variables that point every boto3 client of a process at this server."""
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}

    def stop(self) -> None:
        end_process(self.process)


def start_moto_server(
    port: int | None = None, log_path: Path | None = None, timeout_s: float = 30.0
) -> MotoServer:
    """Start `moto_server` on loopback and wait until it answers."""
    port = port or free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **FAKE_CREDENTIALS},
    )
    server = MotoServer(endpoint_url=f"http://127.0.0.1:{port}", process=process)
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
