"""Inbound, last step: re-identified results to the PACS (C-STORE) and the EHR (FHIR POST)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from edge_forwarder.critical import CriticalNotifier, EhrCommunication, communication
from edge_forwarder.critical import critical_findings as find_critical
from edge_forwarder.observability import Telemetry, log_event
from edge_forwarder.peers import Ehr, Hl7, Pacs
from edge_forwarder.result_objects import (
    DEFAULT_PACS_OBJECTS,
    FILE_NAMES,
    ORU_NAME,
    SEND_ORDER,
    ResultObject,
)
from edge_forwarder.transport.backoff import Backoff, RetryPolicy, retry
from edge_forwarder.transport.ehr import EhrRejected
from edge_forwarder.transport.errors import ForwarderError, PermanentError, TransientError
from edge_forwarder.transport.hl7 import Hl7Rejected
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from edge_forwarder.transport.result_gate import inside, translate
from imaging_ai.contracts import BUNDLE_NAME
from imaging_ai.edge_stage import EdgeStage

_DELIVERED_STAGE = {
    DeliveryTarget.PACS: EdgeStage.DELIVERED_PACS,
    DeliveryTarget.EHR: EdgeStage.DELIVERED_EHR,
    DeliveryTarget.HL7: EdgeStage.DELIVERED_HL7,
    DeliveryTarget.CRITICAL: EdgeStage.NOTIFIED_CRITICAL,
}
_DEAD_LETTER_STAGE = {
    DeliveryTarget.PACS: EdgeStage.DEAD_LETTER_PACS,
    DeliveryTarget.EHR: EdgeStage.DEAD_LETTER_EHR,
    DeliveryTarget.HL7: EdgeStage.DEAD_LETTER_HL7,
    DeliveryTarget.CRITICAL: EdgeStage.DEAD_LETTER_CRITICAL,
}
# The audit action of each target's delivery (a critical notice is audited as such).
_AUDIT_ACTION = {DeliveryTarget.CRITICAL: "critical_notice"}
OPERATION_OUTCOME_NAME = "ehr-operation-outcome.json"
HL7_NAK_NAME = "hl7-nak.txt"
MAIN_PACS = "pacs"
# Timeline note of one PACS destination served: a retried PACS delivery skips it.
PACS_DESTINATION_DONE = "pacs_destination_delivered"


@dataclass(frozen=True)
class PacsDestination:
    """One more PACS, and which result objects it gets."""

    name: str
    peer: Pacs
    objects: tuple[ResultObject, ...]
    retry: RetryPolicy


@dataclass(kw_only=True)
class Delivery:
    """Hands each PENDING delivery to its target; retries, then parks it as a dead letter."""

    journal: Journal
    pacs: Pacs
    ehr: Ehr
    pacs_retry: RetryPolicy
    ehr_retry: RetryPolicy
    telemetry: Telemetry
    deliveries_dir: Path
    stop: threading.Event
    pacs_objects: tuple[ResultObject, ...] = DEFAULT_PACS_OBJECTS
    extra_pacs: Sequence[PacsDestination] = ()
    hl7: Hl7 | None = None
    hl7_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(5, Backoff()))
    # Where critical-finding notices go; None: a FHIR Communication to `ehr`.
    critical: CriticalNotifier | None = None
    critical_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(5, Backoff(0.5)))

    def deliver_pending(self) -> None:
        rows = self.journal.deliveries(state=DeliveryState.PENDING)
        # A critical notice goes before any C-STORE or report: it is what a site waits on.
        rows.sort(key=lambda row: row.target is not DeliveryTarget.CRITICAL)
        for row in rows:
            if self.stop.is_set():
                return
            try:
                # The journal row names the folder: it must still be this run's, under ours.
                folder = inside(self.deliveries_dir, row.run_id)
                if row.payload_dir is None or Path(row.payload_dir).resolve() != folder:
                    raise PermanentError("delivery folder is not this run's (refused)")
                if row.target is DeliveryTarget.PACS:
                    self._deliver_pacs(row.run_id, folder)
                elif row.target is DeliveryTarget.HL7:
                    self._deliver_hl7(row.run_id, folder)
                elif row.target is DeliveryTarget.CRITICAL:
                    self._deliver_critical(row.run_id, folder)
                else:
                    self._deliver_ehr(row.run_id, folder)
                self._finish_if_done(row.run_id)
            except Exception as error:
                # One broken delivery (a file gone, a path refused) never stops the others.
                self._park(row.run_id, row.target, translate(error).reason)
        dead = self.journal.deliveries(state=DeliveryState.DEAD_LETTER)
        self.telemetry.metrics.dead_letters.set(len(dead))

    def _deliver_pacs(self, run_id: str, folder: Path) -> None:
        """Each destination gets its configured objects; one that fails parks the delivery,
        and a retry skips the destinations already served (C-STORE of the same instances
        again would be harmless, but slow and noisy in the PACS log)."""
        main = PacsDestination(MAIN_PACS, self.pacs, self.pacs_objects, self.pacs_retry)
        served = self._pacs_destinations_served(run_id)
        total, titles = 0, []
        for destination in (main, *self.extra_pacs):
            if destination.name in served:
                continue
            objects = [
                (folder / FILE_NAMES[kind]).read_bytes()
                for kind in SEND_ORDER
                if kind in destination.objects and (folder / FILE_NAMES[kind]).exists()
            ]
            if objects:
                try:
                    self._with_retries(
                        run_id,
                        DeliveryTarget.PACS,
                        partial(destination.peer.store, objects),
                        retryable=(TransientError, PermanentError),
                        policy=destination.retry,
                    )
                except ForwarderError as error:
                    self._dead_letter(run_id, DeliveryTarget.PACS, f"{destination.name}: {error}")
                    return
            if self.extra_pacs:  # with one destination a retry has nothing to skip
                detail = f"{destination.name} objects={len(objects)}"
                self.journal.note(run_id, PACS_DESTINATION_DONE, detail=detail)
            total += len(objects)
            titles.append(destination.peer.ae_title)
        self._delivered(
            run_id, DeliveryTarget.PACS, destination=f"pacs:{','.join(titles)}", count=total
        )

    def _pacs_destinations_served(self, run_id: str) -> set[str]:
        return {
            str(detail).split(" ", 1)[0]
            for _, stage, detail in self.journal.timeline(run_id)
            if stage == PACS_DESTINATION_DONE
        }

    def _deliver_hl7(self, run_id: str, folder: Path) -> None:
        # Bytes, not read_text: universal newlines would turn the CR segment ends into LF.
        message = (folder / ORU_NAME).read_bytes().decode("utf-8")
        hl7 = self.hl7
        if hl7 is None:
            self._dead_letter(run_id, DeliveryTarget.HL7, "no [hl7] destination is configured")
            return
        # MSH-10, the control id the ACK's MSA-2 must echo.
        control_id = message.split("\r", 1)[0].split("|")[9]
        try:
            self._with_retries(
                run_id,
                DeliveryTarget.HL7,
                partial(hl7.send, message, control_id),
                retryable=(TransientError,),
                policy=self.hl7_retry,
            )
        except Hl7Rejected as error:
            # On-prem only: the receiver's reason may quote the (identified) message.
            (folder / HL7_NAK_NAME).write_text(error.ack, encoding="utf-8")
            self._dead_letter(run_id, DeliveryTarget.HL7, f"{error} (reason kept)")
            return
        except ForwarderError as error:
            self._dead_letter(run_id, DeliveryTarget.HL7, str(error))
            return
        self._delivered(run_id, DeliveryTarget.HL7, destination="hl7", count=None)

    def _deliver_ehr(self, run_id: str, folder: Path) -> None:
        try:
            bundle = json.loads((folder / BUNDLE_NAME).read_text())
        except ValueError:
            raise PermanentError("the re-identified Bundle on disk is not JSON") from None
        try:
            self._with_retries(
                run_id,
                DeliveryTarget.EHR,
                lambda: self.ehr.post_transaction(bundle),
                retryable=(TransientError,),
            )
        except EhrRejected as error:
            # On-prem only: the OperationOutcome may quote the (re-identified) resource.
            (folder / OPERATION_OUTCOME_NAME).write_text(json.dumps(error.outcome))
            self._dead_letter(
                run_id, DeliveryTarget.EHR, f"{error} (OperationOutcome kept)", http=error.status
            )
            return
        except ForwarderError as error:
            self._dead_letter(run_id, DeliveryTarget.EHR, str(error))
            return
        self._delivered(run_id, DeliveryTarget.EHR, destination="ehr", count=None)

    def _deliver_critical(self, run_id: str, folder: Path) -> None:
        """Each critical finding of the re-identified report, as one notice."""
        try:
            bundle = json.loads((folder / BUNDLE_NAME).read_text())
        except ValueError:
            raise PermanentError("the re-identified Bundle on disk is not JSON") from None
        notifier = self.critical or EhrCommunication(self.ehr)
        sent = datetime.now(UTC)
        notices = [communication(f, run_id, sent) for f in find_critical(bundle)]
        try:
            for notice in notices:
                self._with_retries(
                    run_id,
                    DeliveryTarget.CRITICAL,
                    partial(notifier.notify, notice),
                    retryable=(TransientError,),
                    policy=self.critical_retry,
                )
        except EhrRejected as error:
            (folder / OPERATION_OUTCOME_NAME).write_text(json.dumps(error.outcome))
            self._dead_letter(run_id, DeliveryTarget.CRITICAL, f"{error} (OperationOutcome kept)")
            return
        except ForwarderError as error:
            self._dead_letter(run_id, DeliveryTarget.CRITICAL, str(error))
            return
        self._delivered(
            run_id,
            DeliveryTarget.CRITICAL,
            destination=f"critical:{notifier.destination}",
            count=len(notices),
        )

    def _with_retries(
        self,
        run_id: str,
        target: DeliveryTarget,
        action: Callable[[], object],
        retryable: tuple[type[Exception], ...],
        policy: RetryPolicy | None = None,
    ) -> None:
        if policy is None:
            policy = self.pacs_retry if target is DeliveryTarget.PACS else self.ehr_retry

        def note(attempt: int, error: BaseException, wait: float) -> None:
            self.journal.set_delivery(
                run_id, target, DeliveryState.PENDING, last_error=str(error), attempts_delta=1
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

        retry(
            action,
            should_retry=lambda e: isinstance(e, retryable),
            backoff=policy.backoff,
            max_attempts=policy.attempts,
            on_retry=note,
            stop=self.stop,
        )

    def _delivered(
        self, run_id: str, target: DeliveryTarget, destination: str, count: int | None
    ) -> None:
        stage = _DELIVERED_STAGE[target]
        self.journal.set_delivery(run_id, target, DeliveryState.DELIVERED, attempts_delta=1)
        self.journal.advance(run_id, stage, detail=None if count is None else f"objects={count}")
        self.telemetry.audit.record(
            _AUDIT_ACTION.get(target, "export"),
            pseudo_study_uid=self._pseudo(run_id),
            run_id=run_id,
            destination=destination,
        )
        self.telemetry.metrics.deliveries.labels(target, "delivered").inc()
        counted = {} if count is None else {"count": count}
        log_event(stage, stage=stage, run_id=run_id, **counted)

    def _park(self, run_id: str, target: DeliveryTarget, reason: str) -> None:
        """Dead-letter a delivery that broke outside its retries; if even that cannot be
        recorded in full (its run is in a state that does not allow it), say so and go on."""
        try:
            self._dead_letter(run_id, target, reason)
        except Exception as error:
            log_event("dead_letter_failed", logging.ERROR, run_id=run_id, target=target,
                      error=type(error).__name__)  # fmt: skip

    def _dead_letter(
        self, run_id: str, target: DeliveryTarget, reason: str, http: int | None = None
    ) -> None:
        stage = _DEAD_LETTER_STAGE[target]
        self.journal.set_delivery(
            run_id, target, DeliveryState.DEAD_LETTER, last_error=reason, attempts_delta=1
        )
        self.journal.advance(run_id, stage, reason=reason)
        self.telemetry.audit.record(
            _AUDIT_ACTION.get(target, "export"),
            pseudo_study_uid=self._pseudo(run_id),
            run_id=run_id,
            outcome="8",
            destination=target,
            detail=reason,
        )
        self.telemetry.metrics.deliveries.labels(target, "dead_letter").inc()
        log_event(
            "dead_letter",
            logging.ERROR,
            stage=stage,
            target=target,
            run_id=run_id,
            reason=reason,
            http_status=http,
        )

    def _finish_if_done(self, run_id: str) -> None:
        rows = self.journal.deliveries(run_id=run_id)
        if rows and all(r.state is DeliveryState.DELIVERED for r in rows):
            self.journal.advance(run_id, EdgeStage.DELIVERED)
            shutil.rmtree(inside(self.deliveries_dir, run_id), ignore_errors=True)

    def _pseudo(self, run_id: str) -> str:
        run = self.journal.run(run_id)
        return run.pseudo_study_uid if run else "unknown"
