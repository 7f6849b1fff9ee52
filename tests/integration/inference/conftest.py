"""Start the real inference server as a subprocess on a free loopback port, and stop it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imaging_ai.model_registry import DEMO_MODEL_DIR

REPO = Path(__file__).resolve().parents[3]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(model_dir: Path, timeout_s: float = 60.0) -> RunningServer:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "containers.inference.serve",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={"INFERENCE_CPU_THREADS": "2", "PATH": "/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            requests.get(f"{url}/ping", timeout=2)
            return RunningServer(url, process)
        except requests.ConnectionError:
            time.sleep(0.2)
    stop_server(RunningServer(url, process))
    raise RuntimeError("server did not start listening in time")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
    if server.process.stderr is not None:
        server.process.stderr.close()


@pytest.fixture(scope="module")
def demo_server() -> Iterator[RunningServer]:
    server = start_server(DEMO_MODEL_DIR)
    yield server
    stop_server(server)
