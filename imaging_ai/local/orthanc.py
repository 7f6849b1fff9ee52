"""A throwaway Orthanc PACS on free loopback ports, with REST helpers to see what arrived."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from imaging_ai.errors import PipelineError
from imaging_ai.local.moto_server import free_port
from imaging_ai.local.processes import end_process, first_on_path

ORTHANC_AE_TITLE = "ORTHANC"
# The only calling AE title Orthanc accepts C-STORE from (and only from 127.0.0.1).
SENDER_AE_TITLE = "IMAGINGAI"
_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
# Debian's orthanc-dicomweb links its plugin here (QIDO-RS, WADO-RS, STOW-RS for viewers).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"


class OrthancError(PipelineError):
    """Orthanc could not be started or did not answer as expected."""


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when it is not installed."""
    return first_on_path(_BINARIES)


@dataclass
class Orthanc:
    """A running Orthanc: REST on `rest_url`, DICOM on 127.0.0.1:`dicom_port`."""

    rest_url: str
    dicom_port: int
    ae_title: str
    work_dir: Path
    process: subprocess.Popen[bytes]
    _owns_dir: bool = field(default=False, repr=False)

    def get(self, path: str) -> Any:
        """GET a REST path (e.g. '/studies') and return its JSON."""
        response = requests.get(f"{self.rest_url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def studies(self) -> list[dict[str, Any]]:
        """Every study Orthanc holds, expanded (MainDicomTags, Series ids)."""
        result: list[dict[str, Any]] = self.get("/studies?expand")
        return result

    def study_instances(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every instance of one study, with its main tags and its SOP Class UID."""
        found = requests.post(
            f"{self.rest_url}/tools/find",
            json={"Level": "Study", "Query": {"StudyInstanceUID": study_instance_uid}},
            timeout=10,
        )
        found.raise_for_status()
        instances: list[dict[str, Any]] = []
        for study_id in found.json():
            for instance in self.get(f"/studies/{study_id}/instances"):
                tags = self.get(f"/instances/{instance['ID']}/simplified-tags")
                instances.append({**instance, "Tags": tags})
        return instances

    def stop(self) -> None:
        """Stop Orthanc and remove its storage when this launcher created it."""
        end_process(self.process)
        if self._owns_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's path, or None when Debian's orthanc-dicomweb is not installed."""
    return DICOMWEB_PLUGIN if DICOMWEB_PLUGIN.is_file() else None


def _config(
    work_dir: Path,
    http_port: int,
    dicom_port: int,
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    dicomweb: bool = False,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Name": "imaging-ai-test-pacs",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AE_TITLE,
        # Orthanc 1.10 binds 0.0.0.0; these keep what a stranger could do to nothing:
        # REST answers loopback only, C-STORE only from our AE title on 127.0.0.1.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {
            "pipeline": [SENDER_AE_TITLE, "127.0.0.1", 104],
            **{name: list(peer) for name, peer in (modalities or {}).items()},
        },
        "Plugins": [],
        "StableAge": 1,
        "HttpTimeout": 10,
    }
    if dicomweb:
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        # Host/Ssl only shape absolute BulkDataURIs; viewers behind a proxy use relative ones.
        config["DicomWeb"] = {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": False}
    return config


def start_orthanc(
    work_dir: Path | None = None,
    timeout_s: float = 20.0,
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    dicomweb: bool = False,
) -> Orthanc:
    """Start Orthanc on free ports with a temporary storage directory and wait for REST.

    Parameters
    ----------
    work_dir: pathlib.Path | None, optional
        Where config and storage go; a temporary directory (removed on stop) by default.
    timeout_s: float, optional
        How long to wait for the REST API to answer.
    modalities: Mapping[str, tuple[str, str, int]] | None, optional
        More DICOM peers by name, as (AE title, host, port): Orthanc can C-STORE to them
        (REST ``POST /modalities/{name}/store``) and accepts C-STORE from them.
    dicomweb: bool, optional
        Load the DICOMweb plugin: QIDO-RS / WADO-RS under ``rest_url + DICOMWEB_ROOT``.

    Returns
    -------
    Orthanc
        The running server; call `stop()` when done.
    """
    binary = orthanc_binary()
    if binary is None:
        raise OrthancError("Orthanc is not installed (Debian package 'orthanc')")
    if dicomweb and dicomweb_plugin() is None:
        raise OrthancError("the DICOMweb plugin is not installed (Debian 'orthanc-dicomweb')")
    owns_dir = work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="orthanc-")) if work_dir is None else work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config_path = work_dir / "orthanc.json"
    config_path.write_text(
        json.dumps(_config(work_dir, http_port, dicom_port, modalities, dicomweb), indent=2)
    )
    log = (work_dir / "orthanc.log").open("ab")
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = Orthanc(
        rest_url=f"http://127.0.0.1:{http_port}",
        dicom_port=dicom_port,
        ae_title=ORTHANC_AE_TITLE,
        work_dir=work_dir,
        process=process,
        _owns_dir=owns_dir,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise OrthancError(f"Orthanc exited with code {process.returncode}")
        try:
            server.get("/system")
            return server
        except requests.RequestException:
            time.sleep(0.1)
    server.stop()
    raise OrthancError(f"Orthanc did not answer on port {http_port} within {timeout_s} s")


@contextmanager
def orthanc(work_dir: Path | None = None) -> Iterator[Orthanc]:
    """Run Orthanc for the duration of a `with` block."""
    server = start_orthanc(work_dir)
    try:
        yield server
    finally:
        server.stop()
