"""The forwarder's run loop: completed studies out to S3, results back into PACS and EHR."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_forwarder.observability import AuditTrail, HealthState, Metrics, log_event
from edge_forwarder.transport.backoff import Backoff, retry
from edge_forwarder.transport.ehr import EhrClient, EhrRejected
from edge_forwarder.transport.errors import (
    ForwarderError,
    PermanentError,
    ReidentificationError,
    TransientError,
)
from edge_forwarder.transport.journal import Journal
from edge_forwarder.transport.packaging import pack_series
from edge_forwarder.transport.pacs import PacsPeer, store
from edge_forwarder.transport.reidentify import Identity, reidentify_bundle, reidentify_dicom
from edge_forwarder.transport.result_gate import check_result_objects, inside, translate
from edge_forwarder.transport.results import ReceivedMessage, ResultsPoller
from edge_forwarder.transport.uploader import SeriesTar, Uploader
from imaging_ai.contracts import DeidRecord, SiteResultMessage
from imaging_ai.errors import PipelineError

PACS, EHR = "pacs", "ehr"
PENDING, DELIVERED, DEAD_LETTER = "PENDING", "DELIVERED", "DEAD_LETTER"


class CompletedStudyLike(Protocol):
    study_key: str
    run_number: int
    series: dict[str, list[Path]]


class IntakeLike(Protocol):
    def poll_completed(self) -> list[Any]: ...
    def mark_forwarded(self, study_key: str, run_number: int) -> None: ...
    def mark_failed(self, study_key: str, run_number: int, reason: str) -> None: ...


class DeidentifierLike(Protocol):
    def deidentify_bytes(self, part10: bytes) -> Any: ...


class CrosswalkLike(Protocol):
    def record(self, site: str, result: Any) -> Any: ...


def make_run_id(pseudo_study_uid: str, run_number: int) -> str:
    digest = hashlib.sha256(f"{pseudo_study_uid}:{run_number}".encode()).hexdigest()[:10]
    return f"r{run_number}-{digest}"


@dataclass
class DeliverySettings:
    pacs: PacsPeer
    pacs_attempts: int
    pacs_backoff: Backoff
    ehr_attempts: int
    ehr_backoff: Backoff
    patient_identifier_system: str
    accession_identifier_system: str


class ForwarderService:
    """Two loops on two threads, so an S3 outage never holds results back from PACS or EHR."""

    def __init__(
        self,
        *,
        site: str,
        state_dir: Path,
        journal: Journal,
        intake: IntakeLike,
        deidentifier: DeidentifierLike,
        crosswalk: CrosswalkLike,
        identity_lookup: Callable[[str], Identity | None],
        deid_record: Callable[[Any], DeidRecord],
        pseudo_ids: Callable[[Any], tuple[str, str, str]],
        uploader: Uploader,
        poller: ResultsPoller | None,
        ehr: EhrClient,
        delivery: DeliverySettings,
        audit: AuditTrail,
        metrics: Metrics,
        health: HealthState,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.site = site
        self.state_dir = state_dir
        self.journal = journal
        self.intake = intake
        self.deidentifier = deidentifier
        self.crosswalk = crosswalk
        self.identity_lookup = identity_lookup
        self.deid_record = deid_record
        self.pseudo_ids = pseudo_ids  # DeidResult -> (study, series, sop instance) pseudonyms
        self.uploader = uploader
        self.poller = poller
        self.ehr = ehr
        self.delivery = delivery
        self.audit = audit
        self.metrics = metrics
        self.health = health
        self.poll_interval_s = poll_interval_s
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for name, loop in (("outbound", self.outbound_tick), ("inbound", self.inbound_tick)):
            thread = threading.Thread(target=self._loop, args=(name, loop), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _loop(self, name: str, tick: Callable[[], None]) -> None:
        while not self.stop_event.is_set():
            try:
                tick()
                self.health.tick()
                self.metrics.last_loop.set_to_current_time()
            except Exception as error:
                frame = traceback.extract_tb(error.__traceback__)[-1]
                # File and line, not the message: a library's message may quote data.
                log_event(
                    "loop_error",
                    logging.ERROR,
                    name=name,
                    error=type(error).__name__,
                    where=f"{Path(frame.filename).name}:{frame.lineno}",
                )
            self.stop_event.wait(self.poll_interval_s)

    # ---- outbound: intake -> de-id -> encrypt -> upload ------------------------------------

    def outbound_tick(self) -> None:
        for study in self.intake.poll_completed():
            if self.stop_event.is_set():
                return
            self._take_study(study)
        pending = [r for r in self.journal.runs() if r.stage in ("prepared", "uploading")]
        self.metrics.backlog.set(len(pending))
        for run in pending:
            if self.stop_event.is_set():
                return
            self._upload_run(run.run_id)

    def _take_study(self, study: CompletedStudyLike) -> None:
        known = self.journal.run_for(study.study_key, study.run_number)
        if known is not None and known.stage not in ("received", "complete", "deidentified"):
            return  # already prepared; the upload pass picks it up
        started = time.monotonic()
        instance_count = sum(len(paths) for paths in study.series.values())
        # Intake logs "received" when the first instance lands; this is the hand-over.
        log_event(
            "picked_up",
            stage="picked_up",
            run_number=study.run_number,
            series_count=len(study.series),
            instance_count=instance_count,
        )
        run_id: str | None = None
        try:
            key_hash = hashlib.sha256(study.study_key.encode()).hexdigest()[:16]
            spool = self.state_dir / "outbox" / f"tmp-{key_hash}-{study.run_number}"
            if spool.exists():
                shutil.rmtree(spool)
            spool.mkdir(parents=True)
            series_tars: list[SeriesTar] = []
            pseudo_study_uid = ""
            quarantined = 0
            last_result: Any = None
            for index, paths in enumerate(study.series.values()):
                packed = pack_series(
                    paths,
                    self.deidentifier.deidentify_bytes,
                    self.pseudo_ids,
                    spool / f"series-{index:03d}.tar",
                    on_deidentified=lambda result: self.crosswalk.record(self.site, result),
                    on_quarantined=_log_quarantine,
                )
                quarantined += packed.quarantined
                last_result = packed.last_result or last_result
                tar_path = spool / f"series-{index:03d}.tar"
                if not packed.instances:
                    tar_path.unlink()
                    continue
                pseudo_study_uid = packed.pseudo_study_uid
                final = spool / f"{packed.pseudo_series_uid}.tar"
                tar_path.rename(final)
                series_tars.append(
                    SeriesTar(packed.pseudo_series_uid, packed.modality, final, packed.instances)
                )
            if not series_tars:
                raise PermanentError("every instance of the study was quarantined")
            run_id = make_run_id(pseudo_study_uid, study.run_number)
            self.journal.open_run(run_id, study.study_key, study.run_number, pseudo_study_uid)
            self.journal.advance(run_id, "received", detail=f"instances={instance_count}")
            self.journal.advance(run_id, "complete")
            self.journal.advance(
                run_id,
                "deidentified",
                detail=f"instances={instance_count} quarantined={quarantined}",
            )
            self.audit.record("deidentify", pseudo_study_uid=pseudo_study_uid, run_id=run_id)
            log_event(
                "complete", stage="complete", run_id=run_id, pseudo_study_uid=pseudo_study_uid
            )
            log_event(
                "deidentified",
                stage="deidentified",
                run_id=run_id,
                pseudo_study_uid=pseudo_study_uid,
                instance_count=instance_count,
                seconds=round(time.monotonic() - started, 2),
            )
            self.metrics.studies.labels("deidentified").inc()
            revises = self._previous_run_id(pseudo_study_uid, study.run_number)
            run_dir = self.state_dir / "outbox" / run_id
            if run_dir.exists():
                shutil.rmtree(run_dir)
            spool.rename(run_dir)
            series_tars = [
                SeriesTar(s.pseudo_series_uid, s.modality, run_dir / s.tar_path.name, s.instances)
                for s in series_tars
            ]
            self.journal.set_spool_dir(run_id, run_dir)
            self.uploader.prepare(
                run_id,
                pseudo_study_uid,
                series_tars,
                self.deid_record(last_result),
                revises,
                model_name=getattr(study, "route", None) or None,
            )
            self.journal.advance(run_id, "prepared")
            self.metrics.stage_seconds.labels("prepare").observe(time.monotonic() - started)
        except Exception as error:
            reason = f"{type(error).__name__}"
            log_event("failed", logging.ERROR, stage="deidentify", run_id=run_id, reason=reason)
            if run_id is not None:
                self.journal.advance(run_id, "FAILED", reason=reason)
            self.intake.mark_failed(study.study_key, study.run_number, reason)
            self.metrics.studies.labels("failed").inc()

    def _previous_run_id(self, pseudo_study_uid: str, run_number: int) -> str | None:
        earlier = [
            r for r in self.journal.runs_of_study(pseudo_study_uid) if r.run_number < run_number
        ]
        return earlier[-1].run_id if earlier else None

    def _upload_run(self, run_id: str) -> None:
        run = self.journal.run(run_id)
        assert run is not None
        started = time.monotonic()
        if run.stage != "uploading":
            self.journal.advance(run_id, "uploading")
        sent = self.uploader.upload(run_id, stop=self.stop_event)
        elapsed = time.monotonic() - started
        self.journal.advance(run_id, "uploaded", detail=f"bytes={sent}")
        self.audit.record(
            "upload", pseudo_study_uid=run.pseudo_study_uid, run_id=run_id, destination="s3"
        )
        log_event(
            "uploaded",
            stage="uploaded",
            run_id=run_id,
            pseudo_study_uid=run.pseudo_study_uid,
            bytes=sent,
            seconds=round(elapsed, 2),
            mib_per_s=round(sent / 1048576 / elapsed, 1) if elapsed > 0 else None,
        )
        self.metrics.studies.labels("uploaded").inc()
        self.metrics.stage_seconds.labels("upload").observe(elapsed)
        self.intake.mark_forwarded(run.study_key, run.run_number)
        if run.spool_dir:
            shutil.rmtree(run.spool_dir, ignore_errors=True)

    # ---- inbound: results -> re-id -> PACS + EHR -------------------------------------------

    def inbound_tick(self) -> None:
        """Take what the results queue holds, then deliver. One bad message, or a queue
        outage, never holds back the others or the deliveries already pending."""
        if self.poller is not None:
            try:
                received = self.poller.receive()
            except Exception as error:
                verdict = translate(error)
                log_event("results_poll_failed", logging.WARNING, reason=verdict.reason)
                received = []
            for item in received:
                if self.stop_event.is_set():
                    return
                self._take_received(item)
        self.deliver_pending()

    def _take_received(self, item: ReceivedMessage) -> None:
        """The inbound boundary: every exception of one message ends here, translated."""
        assert self.poller is not None
        message = item.message
        if message is None:
            self._reject(item, None, item.problem or "not a valid SiteResultMessage")
            return
        try:
            self._take_result(message)
        except Exception as error:
            verdict = translate(error)
            if verdict.transient:
                # Left on the queue: it comes back after its visibility timeout.
                log_event(
                    "result_retry_later",
                    logging.WARNING,
                    run_id=message.run_id,
                    reason=verdict.reason,
                )
                return
            self._reject(item, message, verdict.reason)
            return
        self.poller.ack(item.receipt_handle)

    def _reject(
        self, item: ReceivedMessage, message: SiteResultMessage | None, reason: str
    ) -> None:
        """A malformed or tampered result: recorded, dead-lettered on the edge, acknowledged
        (so the queue never hands it out again), and its run FAILED with the reason, but only
        when the message really is that run's (same study): a forged message cannot fail
        another study's run."""
        assert self.poller is not None
        run_id = message.run_id if message is not None else None
        self.journal.reject_result(item.message_id or item.receipt_handle[:64], run_id, reason)
        run = self.journal.run(message.run_id) if message is not None else None
        if (
            run is not None
            and message is not None
            and run.pseudo_study_uid == message.pseudo_study_uid
        ):
            self.journal.advance(run.run_id, "FAILED", reason=f"result rejected: {reason}")
        self.metrics.deliveries.labels("result", "rejected").inc()
        log_event("result_rejected", logging.ERROR, run_id=run_id, reason=reason)
        self.poller.ack(item.receipt_handle)

    def _run_for_message(self, message: SiteResultMessage) -> str:
        run = self.journal.run(message.run_id)
        if run is None:
            # A result for a run this journal does not know (purged, or a cloud re-run).
            self.journal.open_run(
                message.run_id, f"cloud:{message.run_id}", 0, message.pseudo_study_uid
            )
        elif run.pseudo_study_uid != message.pseudo_study_uid:
            # A message naming one study's run and another study: tampered or misrouted.
            raise PermanentError("message names another study than its run")
        return message.run_id

    def _take_result(self, message: SiteResultMessage) -> None:
        """Handle one validated message; raises for the boundary (`_take_received`) to translate."""
        run_id = self._run_for_message(message)
        if message.kind == "FAILED":
            reason = message.reason or "cloud reported a failure"
            self.journal.advance(run_id, "FAILED", reason=f"cloud: {reason}")
            log_event(
                "cloud_failed",
                logging.ERROR,
                stage="FAILED",
                run_id=run_id,
                pseudo_study_uid=message.pseudo_study_uid,
                reason=reason,
            )
            self.metrics.studies.labels("cloud_failed").inc()
            return
        if self.journal.deliveries(run_id=run_id):
            return  # at-least-once queue: this result was already taken
        objects = self.poller.fetch(message) if self.poller else {}
        check_result_objects(objects, message.pseudo_study_uid)
        self.journal.advance(run_id, "results_received", detail=",".join(sorted(objects)))
        log_event(
            "results_received",
            stage="results_received",
            run_id=run_id,
            pseudo_study_uid=message.pseudo_study_uid,
            count=len(objects),
        )
        identity = self.identity_lookup(message.pseudo_study_uid)
        if identity is None:
            raise ReidentificationError("no crosswalk entry for this pseudonymous study")
        payload = self.reidentify(objects, identity, run_id)
        self.journal.advance(run_id, "reidentified")
        self.audit.record("reidentify", pseudo_study_uid=message.pseudo_study_uid, run_id=run_id)
        if "sr.dcm" in payload or "seg.dcm" in payload:
            self.journal.set_delivery(run_id, PACS, PENDING, payload_dir=payload["dir"])
        if "report.bundle.json" in payload:
            self.journal.set_delivery(run_id, EHR, PENDING, payload_dir=payload["dir"])

    def reidentify(
        self, objects: dict[str, bytes], identity: Identity, run_id: str
    ) -> dict[str, Any]:
        """Re-identify each result and keep it in the on-prem delivery folder (mode 0700)."""
        out_dir = inside(self.state_dir / "deliveries", run_id)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload: dict[str, Any] = {"dir": out_dir}
        for name in ("sr.dcm", "seg.dcm"):
            if name in objects:
                data = reidentify_dicom(objects[name], identity, run_id)
                (out_dir / name).write_bytes(data)
                payload[name] = data
        if "report.bundle.json" in objects:
            bundle = reidentify_bundle(
                json.loads(objects["report.bundle.json"]),
                identity,
                patient_identifier_system=self.delivery.patient_identifier_system,
                accession_identifier_system=self.delivery.accession_identifier_system,
            )
            (out_dir / "report.bundle.json").write_text(json.dumps(bundle))
            payload["report.bundle.json"] = bundle
        return payload

    def deliver_pending(self) -> None:
        for row in self.journal.deliveries(state=PENDING):
            if self.stop_event.is_set():
                return
            try:
                # The journal row names the folder; it must still be this run's, under ours.
                folder = inside(self.state_dir / "deliveries", row.run_id)
                if row.payload_dir is None or Path(row.payload_dir).resolve() != folder:
                    raise PermanentError("delivery folder is not this run's (refused)")
                if row.target == PACS:
                    self._deliver_pacs(row.run_id, folder)
                elif row.target == EHR:
                    self._deliver_ehr(row.run_id, folder)
                self._maybe_done(row.run_id)
            except Exception as error:
                # One broken delivery (a file gone, a path refused) never stops the others.
                self._dead_letter(row.run_id, row.target, translate(error).reason)
        self.metrics.dead_letters.set(len(self.journal.deliveries(state=DEAD_LETTER)))

    def _on_retry(self, run_id: str, target: str) -> Callable[[int, BaseException, float], None]:
        def note(attempt: int, error: BaseException, wait: float) -> None:
            self.journal.set_delivery(
                run_id, target, PENDING, last_error=str(error), attempts_delta=1
            )
            self.journal.note(run_id, f"retry_{target}", detail=f"attempt={attempt} {error}")
            log_event(
                "retry",
                logging.WARNING,
                target=target,
                run_id=run_id,
                attempt=attempt,
                wait_s=round(wait, 2),
                error=str(error),
            )

        return note

    def _deliver_pacs(self, run_id: str, folder: Path) -> None:
        objects = [
            (folder / n).read_bytes() for n in ("sr.dcm", "seg.dcm") if (folder / n).exists()
        ]
        try:
            retry(
                lambda: store(self.delivery.pacs, objects),
                should_retry=lambda e: isinstance(e, TransientError | PermanentError),
                backoff=self.delivery.pacs_backoff,
                max_attempts=self.delivery.pacs_attempts,
                on_retry=self._on_retry(run_id, PACS),
                stop=self.stop_event,
            )
        except ForwarderError as error:
            self._dead_letter(run_id, PACS, str(error))
            return
        self.journal.set_delivery(run_id, PACS, DELIVERED, attempts_delta=1)
        self.journal.advance(run_id, "delivered_pacs", detail=f"objects={len(objects)}")
        self.audit.record(
            "export",
            pseudo_study_uid=self._pseudo(run_id),
            run_id=run_id,
            destination=f"pacs:{self.delivery.pacs.ae_title}",
        )
        self.metrics.deliveries.labels(PACS, "delivered").inc()
        log_event("delivered_pacs", stage="delivered_pacs", run_id=run_id, count=len(objects))

    def _deliver_ehr(self, run_id: str, folder: Path) -> None:
        try:
            bundle = json.loads((folder / "report.bundle.json").read_text())
        except ValueError:
            raise PermanentError("the re-identified Bundle on disk is not JSON") from None
        try:
            retry(
                lambda: self.ehr.post_transaction(bundle),
                should_retry=lambda e: isinstance(e, TransientError),
                backoff=self.delivery.ehr_backoff,
                max_attempts=self.delivery.ehr_attempts,
                on_retry=self._on_retry(run_id, EHR),
                stop=self.stop_event,
            )
        except EhrRejected as error:
            # On-prem only: the OperationOutcome may quote the (re-identified) resource.
            (folder / "ehr-operation-outcome.json").write_text(json.dumps(error.outcome))
            self._dead_letter(run_id, EHR, f"{error} (OperationOutcome kept)", http=error.status)
            return
        except ForwarderError as error:
            self._dead_letter(run_id, EHR, str(error))
            return
        self.journal.set_delivery(run_id, EHR, DELIVERED, attempts_delta=1)
        self.journal.advance(run_id, "delivered_ehr")
        self.audit.record(
            "export", pseudo_study_uid=self._pseudo(run_id), run_id=run_id, destination="ehr"
        )
        self.metrics.deliveries.labels(EHR, "delivered").inc()
        log_event("delivered_ehr", stage="delivered_ehr", run_id=run_id)

    def _dead_letter(self, run_id: str, target: str, reason: str, http: int | None = None) -> None:
        self.journal.set_delivery(run_id, target, DEAD_LETTER, last_error=reason, attempts_delta=1)
        self.journal.advance(run_id, f"dead_letter_{target}", reason=reason)
        self.audit.record(
            "export",
            pseudo_study_uid=self._pseudo(run_id),
            run_id=run_id,
            outcome="8",
            destination=target,
            detail=reason,
        )
        self.metrics.deliveries.labels(target, "dead_letter").inc()
        log_event(
            "dead_letter",
            logging.ERROR,
            stage=f"dead_letter_{target}",
            target=target,
            run_id=run_id,
            reason=reason,
            http_status=http,
        )

    def _maybe_done(self, run_id: str) -> None:
        rows = self.journal.deliveries(run_id=run_id)
        if rows and all(r.state == DELIVERED for r in rows):
            self.journal.advance(run_id, "delivered")
            shutil.rmtree(inside(self.state_dir / "deliveries", run_id), ignore_errors=True)

    def _pseudo(self, run_id: str) -> str:
        run = self.journal.run(run_id)
        return run.pseudo_study_uid if run else "unknown"


def _log_quarantine(error: PipelineError) -> None:
    # Quarantined (e.g. burned-in text risk): the instance stays on-prem.
    log_event(
        "quarantined",
        logging.WARNING,
        stage="deidentify",
        reason=str(getattr(error, "reason", type(error).__name__)),
    )
