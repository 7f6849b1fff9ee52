"""Start the real FHIR R4 server (FHIR Works on AWS, from npm) on loopback, its table on moto."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests

from imaging_ai.errors import PipelineError
from imaging_ai.local.moto_server import FAKE_CREDENTIALS, free_port
from imaging_ai.local.processes import end_process

PACKAGE_DIR = Path(__file__).with_name("fhir_server")
PACKAGE_FILES = ("package.json", "package-lock.json", "server.js")
RESOURCE_TABLE = "imaging-ai-fhir-resources"
CACHE_ENV = "IMAGING_AI_NODE_CACHE"


class FhirServerError(PipelineError):
    """The FHIR server could not be installed, started, or did not answer."""


@dataclass
class FhirServer:
    """A running FHIR R4 server; `base_url` takes REST calls, `stop()` ends it."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        """Stop the node process (SIGTERM, then SIGKILL after 10 s)."""
        end_process(self.process)


def install_dir() -> Path:
    """Where `npm ci` installs the server: one cache directory per package-lock content."""
    lock = (PACKAGE_DIR / "package-lock.json").read_bytes()
    root = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "imaging-ai" / "node"))
    return root / f"fhir-server-{hashlib.sha256(lock).hexdigest()[:16]}"


def ensure_installed(timeout_s: float = 600.0) -> Path:
    """Run `npm ci` into the cache directory once; later calls only refresh server.js.

    Returns
    -------
    pathlib.Path
        The directory holding server.js and its node_modules.
    """
    target = install_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_FILES:
        shutil.copyfile(PACKAGE_DIR / name, target / name)
    if (target / "node_modules" / ".package-lock.json").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise FhirServerError("npm is not installed (Debian packages 'nodejs' and 'npm')")
    # --ignore-scripts: the only install script (aws-sdk) prints an end-of-support notice.
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        shutil.rmtree(target / "node_modules", ignore_errors=True)
        raise FhirServerError(f"npm ci failed: {result.stderr[-2000:]}")
    return target


def ensure_table(moto_endpoint_url: str, table_name: str = RESOURCE_TABLE) -> None:
    """Create the DynamoDB table FHIR Works stores resources in (hash id, range vid)."""
    client: Any = boto3.client(
        "dynamodb",
        endpoint_url=moto_endpoint_url,
        region_name=FAKE_CREDENTIALS["AWS_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    if table_name in client.list_tables()["TableNames"]:
        return
    client.create_table(
        TableName=table_name,
        KeySchema=[
            {"AttributeName": "id", "KeyType": "HASH"},
            {"AttributeName": "vid", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "id", "AttributeType": "S"},
            {"AttributeName": "vid", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def start_fhir_server(
    moto_endpoint_url: str, work_dir: Path, timeout_s: float = 60.0
) -> FhirServer:
    """Install (once), then start the FHIR R4 server on a free loopback port.

    Parameters
    ----------
    moto_endpoint_url: str
        The moto server whose DynamoDB holds the FHIR resources.
    work_dir: pathlib.Path
        Where the server's log goes.
    timeout_s: float, optional
        How long to wait for `/metadata` to answer.

    Returns
    -------
    FhirServer
        The running server; call `stop()` when done.
    """
    node = shutil.which("node")
    if node is None:
        raise FhirServerError("node is not installed (Debian package 'nodejs')")
    package = ensure_installed()
    ensure_table(moto_endpoint_url)
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = work_dir / "fhir-server.log"
    environment = {
        "PATH": os.environ.get("PATH", ""),
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": moto_endpoint_url,
        "FHIR_PORT": str(port),
        "RESOURCE_TABLE": RESOURCE_TABLE,
        # aws-xray-sdk wraps the AWS client; outside Lambda there is no trace context.
        "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
        "AWS_SDK_JS_SUPPRESS_MAINTENANCE_MODE_MESSAGE": "1",
        "NODE_ENV": "production",
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [node, "server.js"], cwd=package, env=environment, stdout=log, stderr=log
        )
    server = FhirServer(base_url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FhirServerError(f"FHIR server exited with code {process.returncode}")
        try:
            if requests.get(f"{server.base_url}/metadata", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise FhirServerError(f"FHIR server did not answer on port {port} within {timeout_s} s")
