"""Inbound: result messages from the cloud, re-identified on-prem, queued for PACS and EHR."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_forwarder.critical import critical_findings
from edge_forwarder.delivery import Delivery
from edge_forwarder.identity import StudyIdentity
from edge_forwarder.observability import Telemetry, log_event, log_stage
from edge_forwarder.on_prem_reports import OnPremReports
from edge_forwarder.result_objects import ORU_NAME
from edge_forwarder.transport.errors import ForwarderError, PermanentError, ReidentificationError
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal, RunRow
from edge_forwarder.transport.notice import not_analyzed_notice
from edge_forwarder.transport.reidentify import reidentify_bundle, reidentify_dicom
from edge_forwarder.transport.result_gate import check_result_objects, inside, translate
from edge_forwarder.transport.results import ReceivedMessage
from imaging_ai.contracts import (
    BUNDLE_NAME,
    DICOM_RESULT_NAMES,
    Priority,
    SiteMessageKind,
    SiteResultMessage,
    priority_rank,
)
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
    # A short Basic Text SR to the PACS when the cloud did not analyze a study (off: the
    # radiologist's worklist stays free of it unless the site wants it).
    not_analyzed_notice: bool = False
    # The PDF report and HL7 ORU, rendered here after re-identification (None: neither).
    reports: OnPremReports | None = None

    def tick(self) -> None:
        """Take what the results queue holds, then deliver. One bad message, or a queue
        outage, never holds back the others or the deliveries already pending."""
        try:
            received = self.results.receive()
        except Exception as error:
            log_event("results_poll_failed", logging.WARNING, reason=translate(error).reason)
            received = []
        # STAT results are re-identified first, and delivered first (`journal.deliveries`).
        for item in sorted(received, key=self._rank):
            self.take_received(item)
        self.delivery.deliver_pending()

    def _rank(self, item: ReceivedMessage) -> int:
        """The priority the edge itself recorded for the run (the cloud's word is not needed)."""
        run = self.journal.run(item.message.run_id) if item.message is not None else None
        return priority_rank(run.priority if run is not None else Priority.ROUTINE)

    def take_received(self, item: ReceivedMessage) -> None:
        """The inbound trust boundary: every exception of one message ends here, translated.

        Transient (an S3, KMS or disk outage): left on the queue, it comes back after its
        visibility timeout. Anything else is a malformed or tampered result: rejected.
        """
        message = item.message
        if message is None:
            self._reject(item, None, item.problem or "not a valid SiteResultMessage")
            return
        try:
            self.take(message)
        except Exception as error:
            verdict = translate(error)
            if verdict.transient:
                log_event("result_retry_later", logging.WARNING, run_id=message.run_id,
                          reason=verdict.reason)  # fmt: skip
                return
            self._reject(item, message, verdict.reason)
            return
        self.results.ack(item.receipt_handle)

    def _reject(
        self, item: ReceivedMessage, message: SiteResultMessage | None, reason: str
    ) -> None:
        """Recorded, dead-lettered on the edge (`rejected_results`), acknowledged so the
        queue never hands it out again, and its run FAILED with the reason, but only when
        the message names that run's own study: a forged message cannot fail another run."""
        run_id = message.run_id if message is not None else None
        self.journal.reject_result(item.message_id or item.receipt_handle[:64], run_id, reason)
        run = self.journal.run(message.run_id) if message is not None else None
        if (
            run is not None
            and message is not None
            and run.pseudo_study_uid == message.pseudo_study_uid
            and run.stage not in TERMINAL_EDGE_STAGES
        ):
            self.journal.advance(run.run_id, EdgeStage.FAILED, reason=f"result rejected: {reason}")
        self.telemetry.metrics.deliveries.labels("result", "rejected").inc()
        self.telemetry.audit.record(
            "import",
            pseudo_study_uid=message.pseudo_study_uid if message is not None else None,
            study_key="unparsed result message",
            run_id=run_id,
            outcome="8",
            destination="results queue",
            detail=f"rejected: {reason}",
        )
        log_event("result_rejected", logging.ERROR, run_id=run_id, reason=reason)
        self.results.ack(item.receipt_handle)

    def take(self, message: SiteResultMessage) -> None:
        """Handle one validated message; raise for the boundary (`take_received`) to judge."""
        run_id = self._run_for(message)
        if message.kind == SiteMessageKind.FAILED:
            self._cloud_failed(run_id, message)
            return
        if message.kind == SiteMessageKind.NOT_ANALYZED:
            self._not_analyzed(run_id, message)
            return
        run = self.journal.run(run_id)
        assert run is not None
        if run.stage is EdgeStage.SHADOW_STORED or self.journal.deliveries(run_id=run_id):
            return  # at-least-once queue: this result was already taken
        objects = self.results.fetch(message)
        check_result_objects(objects, message.pseudo_study_uid)
        self._advance_once(run_id, EdgeStage.RESULTS_RECEIVED, detail=",".join(sorted(objects)))
        log_stage(
            EdgeStage.RESULTS_RECEIVED,
            run_id=run_id,
            pseudo_study_uid=message.pseudo_study_uid,
            count=len(objects),
        )
        identity = self.identities.study_by_pseudo(message.pseudo_study_uid)
        if identity is None:
            raise ReidentificationError("no crosswalk entry for this pseudonymous study")
        folder = self.reidentify(objects, identity, run_id)
        self._advance_once(run_id, EdgeStage.REIDENTIFIED)
        self.telemetry.audit.record(
            "reidentify", pseudo_study_uid=message.pseudo_study_uid, run_id=run_id
        )
        if run.shadow:
            self._keep_shadow(run, folder)
            return
        if any(name in objects for name in DICOM_RESULT_NAMES):
            self.journal.set_delivery(
                run_id, DeliveryTarget.PACS, DeliveryState.PENDING, payload_dir=folder
            )
        if BUNDLE_NAME in objects:
            self.journal.set_delivery(
                run_id, DeliveryTarget.EHR, DeliveryState.PENDING, payload_dir=folder
            )
            if critical_findings(json.loads((folder / BUNDLE_NAME).read_text())):
                self.journal.set_delivery(
                    run_id, DeliveryTarget.CRITICAL, DeliveryState.PENDING, payload_dir=folder
                )
                log_event("critical_finding", logging.WARNING, run_id=run_id,
                          pseudo_study_uid=message.pseudo_study_uid)  # fmt: skip
        if (folder / ORU_NAME).exists():
            self.journal.set_delivery(
                run_id, DeliveryTarget.HL7, DeliveryState.PENDING, payload_dir=folder
            )

    def _keep_shadow(self, run: RunRow, folder: Path) -> None:
        """A shadow-mode model's results stay in the delivery folder: no PACS, EHR or HL7."""
        self.journal.advance(run.run_id, EdgeStage.SHADOW_STORED, detail=run.model_name)
        log_stage(
            EdgeStage.SHADOW_STORED,
            run_id=run.run_id,
            pseudo_study_uid=run.pseudo_study_uid,
            name=run.model_name,
            count=sum(1 for _ in folder.iterdir()),
        )
        self.telemetry.metrics.shadow_results.labels(run.model_name).inc()
        self.telemetry.audit.record(
            "shadow_stored", pseudo_study_uid=run.pseudo_study_uid, run_id=run.run_id,
            detail=f"model {run.model_name} in shadow mode: not delivered",
        )  # fmt: skip

    def reidentify(self, objects: dict[str, bytes], identity: StudyIdentity, run_id: str) -> Path:
        """Re-identify each result into the on-prem delivery folder (mode 0700); return it."""
        folder = inside(self.deliveries_dir, run_id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        run = self.journal.run(run_id)
        revised = self.journal.revised_run(run) if run is not None else None
        for name in DICOM_RESULT_NAMES:
            if name in objects:
                (folder / name).write_bytes(
                    reidentify_dicom(
                        objects[name], identity, run_id, revised.run_id if revised else None
                    )
                )
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

    def _advance_once(self, run_id: str, stage: EdgeStage, detail: str | None = None) -> None:
        # A message taken again after a transient failure (disk full while re-identifying)
        # finds its run already at this stage: the step is redone, the move is not.
        run = self.journal.run(run_id)
        if run is None or run.stage is not stage:
            self.journal.advance(run_id, stage, detail=detail)

    def _run_for(self, message: SiteResultMessage) -> str:
        run = self.journal.run(message.run_id)
        if run is not None and run.pseudo_study_uid != message.pseudo_study_uid:
            # One study's run named with another study: tampered or misrouted.
            raise PermanentError("message names another study than its run")
        if run is None:
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

    def _not_analyzed(self, run_id: str, message: SiteResultMessage) -> None:
        """The study is outside the model's intended use: the run ends, nothing goes to the
        PACS or the EHR except, where the site asked for it, a short notice to the PACS."""
        reason = f"not analyzed: {message.reason or 'outside the model intended use'}"
        run = self.journal.run(run_id)
        if run is not None and run.stage in TERMINAL_EDGE_STAGES:
            self.journal.note(run_id, "not_analyzed_after_end", detail=reason)
            return
        self.journal.advance(run_id, EdgeStage.NOT_ANALYZED, reason=reason)
        log_stage(
            EdgeStage.NOT_ANALYZED,
            run_id=run_id,
            pseudo_study_uid=message.pseudo_study_uid,
            reason=reason,
        )
        self.telemetry.metrics.studies.labels(EdgeStage.NOT_ANALYZED.value).inc()
        self.telemetry.audit.record(
            "not_analyzed", pseudo_study_uid=message.pseudo_study_uid, run_id=run_id, detail=reason
        )
        if self.not_analyzed_notice and not (run is not None and run.shadow):
            self._send_notice(run_id, message)

    def _send_notice(self, run_id: str, message: SiteResultMessage) -> None:
        """One attempt: the notice is a courtesy, its loss must not hold the queue."""
        identity = self.identities.study_by_pseudo(message.pseudo_study_uid)
        if identity is None:
            self.journal.note(run_id, "notice_skipped", detail="no crosswalk entry")
            return
        reason = message.reason or "outside the model's intended use"
        notice = not_analyzed_notice(identity, reason, message.model_name, run_id)
        try:
            self.delivery.pacs.store([notice])
        except ForwarderError as error:
            self.journal.note(run_id, "notice_failed", detail=str(error))
            log_event("notice_failed", logging.WARNING, run_id=run_id, error=str(error))
            return
        self.journal.note(run_id, "notice_sent", detail=f"pacs:{self.delivery.pacs.ae_title}")
