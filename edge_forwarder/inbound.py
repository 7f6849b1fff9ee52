"""Inbound: result messages from the cloud, re-identified on-prem, queued for PACS and EHR."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_forwarder.delivery import Delivery
from edge_forwarder.identity import StudyIdentity
from edge_forwarder.observability import Telemetry, log_event
from edge_forwarder.on_prem_reports import OnPremReports
from edge_forwarder.result_objects import ORU_NAME
from edge_forwarder.transport.errors import ForwarderError, PermanentError, ReidentificationError
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from edge_forwarder.transport.reidentify import reidentify_bundle, reidentify_dicom
from edge_forwarder.transport.results import ReceivedMessage
from imaging_ai.contracts import BUNDLE_NAME, DICOM_RESULT_NAMES, SiteResultMessage
from imaging_ai.edge_stage import TERMINAL_EDGE_STAGES, EdgeStage


class ResultsSource(Protocol):
    """The site's results queue and result objects (`transport.results.ResultsPoller`)."""

    def receive(self) -> list[ReceivedMessage]: ...
    def ack(self, receipt_handle: str) -> None: ...
    def fetch(self, message: SiteResultMessage) -> dict[str, bytes]: ...


class IdentityLookup(Protocol):
    """The crosswalk vault (`crosswalk.CrosswalkVault`)."""

    def study_by_pseudo(self, pseudo_study_uid: str) -> StudyIdentity | None: ...


@dataclass(frozen=True)
class IdentifierSystems:
    """The EHR's identifier systems for the re-identified patient and accession number."""

    patient: str
    accession: str


@dataclass(kw_only=True)
class Inbound:
    """Takes each result message once (the queue is at-least-once), then delivers."""

    journal: Journal
    results: ResultsSource
    identities: IdentityLookup
    identifier_systems: IdentifierSystems
    delivery: Delivery
    telemetry: Telemetry
    deliveries_dir: Path
    # The PDF report and HL7 ORU, rendered here after re-identification (None: neither).
    reports: OnPremReports | None = None

    def tick(self) -> None:
        for received in self.results.receive():
            if received.message is None:
                # Not acknowledged: the queue's redrive policy parks it in the DLQ.
                log_event("result_message_rejected", logging.WARNING, reason=received.problem)
                continue
            if self.take(received.message):
                self.results.ack(received.receipt_handle)
        self.delivery.deliver_pending()

    def take(self, message: SiteResultMessage) -> bool:
        """Handle one message; True when it may be acknowledged."""
        run_id = self._run_for(message)
        if message.kind == "FAILED":
            self._cloud_failed(run_id, message)
            return True
        if self.journal.deliveries(run_id=run_id):
            return True  # at-least-once queue: this result was already taken
        try:
            objects = self.results.fetch(message)
        except PermanentError as error:
            self._fail(run_id, EdgeStage.RESULTS_RECEIVED, str(error))
            return True
        self.journal.advance(run_id, EdgeStage.RESULTS_RECEIVED, detail=",".join(sorted(objects)))
        log_event(
            EdgeStage.RESULTS_RECEIVED,
            stage=EdgeStage.RESULTS_RECEIVED,
            run_id=run_id,
            pseudo_study_uid=message.pseudo_study_uid,
            count=len(objects),
        )
        try:
            identity = self.identities.study_by_pseudo(message.pseudo_study_uid)
            if identity is None:
                raise ReidentificationError("no crosswalk entry for this pseudonymous study")
            folder = self.reidentify(objects, identity, run_id)
        except ForwarderError as error:
            self._fail(run_id, EdgeStage.REIDENTIFIED, str(error))
            return True
        self.journal.advance(run_id, EdgeStage.REIDENTIFIED)
        self.telemetry.audit.record(
            "reidentify", pseudo_study_uid=message.pseudo_study_uid, run_id=run_id
        )
        if any(name in objects for name in DICOM_RESULT_NAMES):
            self.journal.set_delivery(
                run_id, DeliveryTarget.PACS, DeliveryState.PENDING, payload_dir=folder
            )
        if BUNDLE_NAME in objects:
            self.journal.set_delivery(
                run_id, DeliveryTarget.EHR, DeliveryState.PENDING, payload_dir=folder
            )
        if (folder / ORU_NAME).exists():
            self.journal.set_delivery(
                run_id, DeliveryTarget.HL7, DeliveryState.PENDING, payload_dir=folder
            )
        return True

    def reidentify(self, objects: dict[str, bytes], identity: StudyIdentity, run_id: str) -> Path:
        """Re-identify each result into the on-prem delivery folder (mode 0700); return it."""
        folder = self.deliveries_dir / run_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in DICOM_RESULT_NAMES:
            if name in objects:
                (folder / name).write_bytes(reidentify_dicom(objects[name], identity, run_id))
        if BUNDLE_NAME in objects:
            bundle: dict[str, Any] = reidentify_bundle(
                json.loads(objects[BUNDLE_NAME]),
                identity,
                patient_identifier_system=self.identifier_systems.patient,
                accession_identifier_system=self.identifier_systems.accession,
            )
            (folder / BUNDLE_NAME).write_text(json.dumps(bundle))
        if self.reports is not None:
            self.reports.render(folder, identity, run_id)
        return folder

    def _run_for(self, message: SiteResultMessage) -> str:
        if self.journal.run(message.run_id) is None:
            # A result for a run this journal does not know (purged, or a cloud re-run): the
            # cloud has its upload, so the run opens as uploaded.
            self.journal.open_run(
                message.run_id,
                f"cloud:{message.run_id}",
                0,
                message.pseudo_study_uid,
                stage=EdgeStage.UPLOADED,
                detail="opened from a cloud message",
            )
        return message.run_id

    def _cloud_failed(self, run_id: str, message: SiteResultMessage) -> None:
        reason = message.reason or "cloud reported a failure"
        run = self.journal.run(run_id)
        if run is not None and run.stage in TERMINAL_EDGE_STAGES:
            # A late or repeated message for a run that has ended: nothing left to change.
            self.journal.note(run_id, "cloud_failed_after_end", detail=reason)
            return
        self.journal.advance(run_id, EdgeStage.FAILED, reason=f"cloud: {reason}")
        log_event(
            "cloud_failed",
            logging.ERROR,
            stage=EdgeStage.FAILED,
            run_id=run_id,
            pseudo_study_uid=message.pseudo_study_uid,
            reason=reason,
        )
        self.telemetry.metrics.studies.labels("cloud_failed").inc()

    def _fail(self, run_id: str, step: EdgeStage, reason: str) -> None:
        self.journal.advance(run_id, EdgeStage.FAILED, reason=reason)
        log_event("failed", logging.ERROR, stage=EdgeStage.FAILED, step=step, run_id=run_id,
                  reason=reason)  # fmt: skip
