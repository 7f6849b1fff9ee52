"""Fakes at the forwarder's adapter boundary: intake, S3 upload, results queue, PACS, EHR."""

from __future__ import annotations

import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_forwarder.delivery import Delivery
from edge_forwarder.observability import AuditTrail, HealthState, Metrics, Telemetry
from edge_forwarder.transport.backoff import Backoff, RetryPolicy
from edge_forwarder.transport.errors import TransientError
from edge_forwarder.transport.journal import Journal
from edge_forwarder.transport.results import ReceivedMessage
from edge_forwarder.transport.uploader import SeriesTar
from imaging_ai.contracts import DeidRecord, ModelRun, Priority, SiteResultMessage


@dataclass
class Prepared:
    run_id: str
    pseudo_study_uid: str
    series: list[SeriesTar]
    deidentification: DeidRecord
    runs: list[ModelRun]
    members: dict[str, list[str]]  # tar name -> member names, read while preparing
    priority: Priority = Priority.ROUTINE

    @property
    def revises_run_id(self) -> str | None:
        return self.runs[0].revises_run_id

    @property
    def model_name(self) -> str:
        return self.runs[0].model_name


@dataclass
class FakeUploader:
    """Records what would be encrypted and sent; `fail_uploads` S3 calls fail first."""

    prepared: list[Prepared] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    fail_uploads: int = 0

    def prepare(self, run_id: str, pseudo_study_uid: str, series: list[SeriesTar],
                deidentification: DeidRecord, runs: list[ModelRun],
                priority: Priority = Priority.ROUTINE) -> None:  # fmt: skip
        members = {}
        for item in series:
            with tarfile.open(item.tar_path) as archive:
                members[item.tar_path.name] = archive.getnames()
        self.prepared.append(
            Prepared(
                run_id,
                pseudo_study_uid,
                series,
                deidentification,
                runs,
                members,
                priority,
            )
        )

    def upload(self, run_id: str, stop: threading.Event | None = None) -> int:
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise TransientError("S3 unreachable")
        self.uploaded.append(run_id)
        return 1234


@dataclass
class FakeResults:
    """A results queue holding messages, and the (already decrypted) objects they name."""

    messages: list[ReceivedMessage] = field(default_factory=list)
    objects: dict[str, dict[str, bytes]] = field(default_factory=dict)  # run id -> name -> bytes
    acked: list[str] = field(default_factory=list)

    def send(self, message: SiteResultMessage, objects: dict[str, bytes] | None = None) -> None:
        self.messages.append(ReceivedMessage(f"receipt-{len(self.messages)}", message))
        if objects is not None:
            self.objects[message.run_id] = objects

    def receive(self) -> list[ReceivedMessage]:
        pending = [m for m in self.messages if m.receipt_handle not in self.acked]
        return pending

    def ack(self, receipt_handle: str) -> None:
        self.acked.append(receipt_handle)

    def fetch(self, message: SiteResultMessage) -> dict[str, bytes]:
        return dict(self.objects[message.run_id])


@dataclass
class FakePacs:
    ae_title: str = "PACS"
    failures: list[Exception] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)

    def store(self, objects: list[bytes]) -> list[int]:
        if self.failures:
            raise self.failures.pop(0)
        self.stored.extend(objects)
        return [0] * len(objects)


@dataclass
class FakeEhr:
    failures: list[Exception] = field(default_factory=list)
    posted: list[dict[str, Any]] = field(default_factory=list)

    def post_transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if self.failures:
            raise self.failures.pop(0)
        self.posted.append(bundle)
        return {"resourceType": "Bundle", "type": "transaction-response"}


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "forwarder.sqlite")


@pytest.fixture
def telemetry(tmp_path: Path) -> Telemetry:
    return Telemetry(Metrics(), HealthState(), AuditTrail(tmp_path / "audit.jsonl", "site-a"))


def make_delivery(
    journal: Journal, telemetry: Telemetry, pacs: FakePacs, ehr: FakeEhr, folder: Path
) -> Delivery:
    no_wait = RetryPolicy(attempts=3, backoff=Backoff(0.0, 0.0))
    return Delivery(journal=journal, pacs=pacs, ehr=ehr, pacs_retry=no_wait, ehr_retry=no_wait,
                    telemetry=telemetry, deliveries_dir=folder, stop=threading.Event())  # fmt: skip
