"""Inbound, last step: re-identified results to the PACS (C-STORE) and the EHR (FHIR POST)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_forwarder.observability import Telemetry, log_event
from edge_forwarder.transport.backoff import RetryPolicy, retry
from edge_forwarder.transport.ehr import EhrRejected
from edge_forwarder.transport.errors import ForwarderError, PermanentError, TransientError
from edge_forwarder.transport.journal import DeliveryState, DeliveryTarget, Journal
from edge_forwarder.transport.result_gate import inside, translate
from imaging_ai.contracts import BUNDLE_NAME, DICOM_RESULT_NAMES
from imaging_ai.edge_stage import EdgeStage

_DELIVERED_STAGE = {
    DeliveryTarget.PACS: EdgeStage.DELIVERED_PACS,
    DeliveryTarget.EHR: EdgeStage.DELIVERED_EHR,
}
_DEAD_LETTER_STAGE = {
    DeliveryTarget.PACS: EdgeStage.DEAD_LETTER_PACS,
    DeliveryTarget.EHR: EdgeStage.DEAD_LETTER_EHR,
}
OPERATION_OUTCOME_NAME = "ehr-operation-outcome.json"


class Pacs(Protocol):
    """The hospital PACS (`transport.pacs.PacsPeer`)."""

    @property
    def ae_title(self) -> str: ...
    def store(self, objects: list[bytes]) -> list[int]: ...


class Ehr(Protocol):
    """The hospital EHR's FHIR endpoint (`transport.ehr.EhrClient`)."""

    def post_transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...


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

    def deliver_pending(self) -> None:
        for row in self.journal.deliveries(state=DeliveryState.PENDING):
            if self.stop.is_set():
                return
            try:
                # The journal row names the folder: it must still be this run's, under ours.
                folder = inside(self.deliveries_dir, row.run_id)
                if row.payload_dir is None or Path(row.payload_dir).resolve() != folder:
                    raise PermanentError("delivery folder is not this run's (refused)")
                if row.target is DeliveryTarget.PACS:
                    self._deliver_pacs(row.run_id, folder)
                else:
                    self._deliver_ehr(row.run_id, folder)
                self._finish_if_done(row.run_id)
            except Exception as error:
                # One broken delivery (a file gone, a path refused) never stops the others.
                self._park(row.run_id, row.target, translate(error).reason)
        dead = self.journal.deliveries(state=DeliveryState.DEAD_LETTER)
        self.telemetry.metrics.dead_letters.set(len(dead))

    def _deliver_pacs(self, run_id: str, folder: Path) -> None:
        objects = [(folder / n).read_bytes() for n in DICOM_RESULT_NAMES if (folder / n).exists()]
        try:
            self._with_retries(
                run_id,
                DeliveryTarget.PACS,
                lambda: self.pacs.store(objects),
                retryable=(TransientError, PermanentError),
            )
        except ForwarderError as error:
            self._dead_letter(run_id, DeliveryTarget.PACS, str(error))
            return
        self._delivered(
            run_id,
            DeliveryTarget.PACS,
            destination=f"pacs:{self.pacs.ae_title}",
            count=len(objects),
        )

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

    def _with_retries(
        self,
        run_id: str,
        target: DeliveryTarget,
        action: Callable[[], object],
        retryable: tuple[type[Exception], ...],
    ) -> None:
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
            "export", pseudo_study_uid=self._pseudo(run_id), run_id=run_id, destination=destination
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
            "export",
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
