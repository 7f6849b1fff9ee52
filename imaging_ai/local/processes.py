"""Child processes of the local runtime: start with a log file, wait until ready, stop cleanly."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from imaging_ai.errors import PipelineError


def end_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL when the process has not exited after `timeout_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident memory so far (Linux VmHWM); 0 once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def http_ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return requests.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    return probe


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return probe


@dataclass
class ManagedProcess:
    """A named child process whose output goes to `log_path`."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout_s: float = 60.0) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            start_new_session=True,  # a Ctrl-C in the demo is handled by us, not by children
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PipelineError(
                    f"{self.name} exited with code {self.process.returncode}; see {self.log_path}"
                )
            if ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise PipelineError(
            f"{self.name} was not ready after {timeout_s:.0f} s; see {self.log_path}"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is not None:
            end_process(self.process, timeout_s)


def first_on_path(names: Iterable[str]) -> str | None:
    """The path of the first of `names` found on PATH (packages name a tool differently)."""
    return next((found for name in names if (found := shutil.which(name))), None)


def dcmtk_tool(name: str) -> str | None:
    """Path of a DCMTK command-line tool; pynetdicom installs same-named apps in the venv."""
    candidates = [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    found = shutil.which(name)
    if found:
        candidates.append(found)
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        try:
            version = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (version.stdout + version.stderr).lower():
            return candidate
    return None
