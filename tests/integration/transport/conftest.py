"""Real peers for transport tests: DCMTK storescp as PACS, a scripted loopback EHR, the cloud."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import (
    Manifest,
    Priority,
    SiteResultMessage,
    encryption_context,
    manifest_key,
    result_key,
    site_results_queue_name,
)
from imaging_ai.http_handler import QuietHandler
from imaging_ai.local.moto_server import free_port
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import TriageResult
from imaging_ai.results import build_results
from imaging_ai.results.key_images import key_slice_indices, stored_to_hu
from imaging_ai.synthetic import SyntheticStudy
from tests.model_io_support import input_meta, output_meta
from tests.unit.results.sample import demo_card

SITE = "site-a"
BUCKET = "imaging-ai-data"
STORESCP = shutil.which("storescp", path="/usr/bin") or "/usr/bin/storescp"


@dataclass
class Pacs:
    port: int
    ae_title: str
    folder: Path
    process: subprocess.Popen[bytes]

    def received(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.folder.glob("*")) if p.is_file()]


def start_storescp(folder: Path, ae_title: str = "PACS", extra: list[str] | None = None) -> Pacs:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [STORESCP, "-aet", ae_title, "-od", str(folder), "+xa", *(extra or []), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return Pacs(port, ae_title, folder, process)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("storescp did not start")


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    peer = start_storescp(tmp_path / "pacs")
    yield peer
    peer.process.terminate()
    peer.process.wait(10)


@dataclass
class Ehr:
    """A loopback FHIR endpoint answering from a script of (status, body) pairs."""

    url: str
    script: list[tuple[int, dict[str, Any]]]
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    token_requests: int = 0
    token_ttl_s: int = 3600


@pytest.fixture
def ehr() -> Iterator[Ehr]:
    state = Ehr(url="", script=[])

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            if self.path == "/token":
                state.token_requests += 1
                answer: dict[str, Any] = {
                    "access_token": f"tok-{state.token_requests}",
                    "token_type": "bearer",
                    "expires_in": state.token_ttl_s,
                }
                status = 200
                self.server_form = body  # type: ignore[attr-defined]
            else:
                state.received.append(json.loads(body))
                state.headers.append(dict(self.headers))
                status, answer = (
                    state.script.pop(0)
                    if state.script
                    else (200, {"resourceType": "Bundle", "type": "transaction-response"})
                )
            self.reply(status, json.dumps(answer).encode(), "application/fhir+json")

    with loopback_http(Handler) as url:
        state.url = f"{url}/fhir"
        yield state


@contextmanager
def loopback_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` from a thread on a free loopback port; yield its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class CloudSide:
    """The cloud half of the contract, played in the test: read the upload, answer results."""

    key_arn: str
    queue_url: str

    def read_manifest(
        self, pseudo_study_uid: str, priority: Priority = Priority.ROUTINE
    ) -> Manifest:
        key = manifest_key(SITE, pseudo_study_uid, priority)
        body = client("s3").get_object(Bucket=BUCKET, Key=key)
        plain = envelope.decrypt_bytes(
            body["Body"].read(), self.key_arn, encryption_context(SITE, pseudo_study_uid)
        )
        return Manifest.model_validate_json(plain)

    def read_series(self, manifest: Manifest) -> list[pydicom.Dataset]:
        datasets = []
        context = encryption_context(SITE, manifest.pseudo_study_uid)
        for series in manifest.series:
            body = client("s3").get_object(Bucket=BUCKET, Key=series.object_key)["Body"].read()
            plain = envelope.decrypt_bytes(body, self.key_arn, context)
            with tarfile.open(fileobj=io.BytesIO(plain)) as archive:
                for member in archive.getmembers():
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    datasets.append(pydicom.dcmread(io.BytesIO(extracted.read())))
        return datasets

    def answer(
        self,
        manifest: Manifest,
        study: SyntheticStudy,
        edit_bundle: Callable[[dict[str, Any]], None] | None = None,
        card: ModelCard | None = None,
        triage: TriageResult | None = None,
    ) -> SiteResultMessage:
        """Build real SR/SEG/Bundle from the de-identified upload, encrypt, notify the site.

        `edit_bundle` changes the Bundle after it was built: a cloud-side defect. `card` and
        `triage` stand for a model with a per-study flag (default: the demo card, no flag)."""
        headers = sorted(self.read_series(manifest), key=lambda d: float(d.ImagePositionPatient[2]))
        labels = (study.phantom.nodule_mask > 0).astype(np.uint8)
        geometry = study.phantom.geometry()
        card = card or demo_card()
        findings = study.phantom.truth_findings()
        meta = input_meta(
            geometry,
            model_name=card.name,
            sop_instance_uids=[str(d.SOPInstanceUID) for d in headers],
            site=SITE,
            pseudo_study_uid=manifest.pseudo_study_uid,
            pseudo_series_uid=str(headers[0].SeriesInstanceUID),
            run_id=manifest.runs[0].run_id,
        )
        output = output_meta(meta, findings, card, triage=triage)
        # The key images burn the outline into the de-identified slices, as postprocess does.
        key_slices = {k: stored_to_hu(headers[k]) for k in key_slice_indices(labels, output)}
        for d in headers:
            del d.PixelData
        objects = build_results(
            headers, labels, output, card, manifest.runs[0].run_id, key_slices_hu=key_slices
        )
        if edit_bundle is not None:
            edit_bundle(objects.bundle)
        context = encryption_context(SITE, manifest.pseudo_study_uid)
        keys = {}
        for name, data in (
            ("sr.dcm", _part10(objects.sr)),
            ("seg.dcm", _part10(objects.seg)),
            ("report.bundle.json", json.dumps(objects.bundle).encode()),
            ("keyimages.dcm", _part10(objects.key_images)),  # type: ignore[arg-type]
        ):
            key = result_key(SITE, manifest.pseudo_study_uid, manifest.runs[0].run_id, name)
            client("s3").put_object(
                Bucket=BUCKET, Key=key, Body=envelope.encrypt_bytes(data, self.key_arn, context)
            )
            keys[name] = key
        message = SiteResultMessage(
            kind="RESULT_READY",
            site=SITE,
            pseudo_study_uid=manifest.pseudo_study_uid,
            run_id=manifest.runs[0].run_id,
            result_keys=keys,
        )
        client("sqs").send_message(QueueUrl=self.queue_url, MessageBody=message.model_dump_json())
        return message

    def fail(self, pseudo_study_uid: str, run_id: str, reason: str) -> None:
        message = SiteResultMessage(
            kind="FAILED",
            site=SITE,
            pseudo_study_uid=pseudo_study_uid,
            run_id=run_id,
            reason=reason,
        )
        client("sqs").send_message(QueueUrl=self.queue_url, MessageBody=message.model_dump_json())


def _part10(dataset: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def cloud(aws: object) -> CloudSide:
    """Bucket, KMS key and the site's results queue on the moto server."""
    client("s3").create_bucket(Bucket=BUCKET)
    key_arn = str(client("kms").create_key()["KeyMetadata"]["Arn"])
    queue_url = client("sqs").create_queue(QueueName=site_results_queue_name(SITE))["QueueUrl"]
    return CloudSide(key_arn=key_arn, queue_url=str(queue_url))


def write_config(
    tmp: Path,
    cloud: CloudSide,
    pacs_port: int,
    ehr_url: str,
    *,
    extra: str = "",
    upload: str = "",
    pacs_ae: str = "PACS",
    scp_port: int = 0,
    metrics_port: int = 0,
) -> Path:
    """A complete config file for the tests (secrets as hex files, as in production)."""
    for name, secret in (("site.secret", "11" * 32), ("crosswalk.key", "22" * 32)):
        (tmp / name).write_text(secret)
        (tmp / name).chmod(0o600)  # the forwarder refuses secrets others can read
    path = tmp / "forwarder.toml"
    path.write_text(
        f"""
site = "{SITE}"
state_dir = "state"
poll_interval_s = 0.2

[intake]
spool_dir = "spool"
port = {scp_port}
# `edge-forwarder send` calls as SENDER.
senders = [{{ name = "test-modality", ae_title = "SENDER", addresses = ["127.0.0.1"] }}]
{extra}

[deid]
site_secret = {{ file = "site.secret" }}

[crosswalk]
path = "state/crosswalk.sqlite"
key = {{ file = "crosswalk.key" }}

[aws]
bucket = "{BUCKET}"
kms_key_arn = "{cloud.key_arn}"

[upload]
part_size_mib = 5
parallel_parts = 3
base_backoff_s = 0.05
max_backoff_s = 0.5
{upload}

[results]
wait_time_s = 1

[pacs]
host = "127.0.0.1"
port = {pacs_port}
ae_title = "{pacs_ae}"
max_attempts = 3
retry_base_s = 0.05

[ehr]
base_url = "{ehr_url}"
max_attempts = 3
retry_base_s = 0.05

[observability]
metrics_port = {metrics_port}
"""
    )
    return path
