"""Postprocess one inference notification: results written, encrypted and announced, or FAILED."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import pydicom
from aws_lambda_powertools.metrics import MetricUnit
from pydicom.dataset import Dataset

from functions.common.adapters import ObjectMissing, SiteNotifier, StudyObjectStore
from functions.common.keys import parse_input_location, source_headers_key
from functions.common.model_cards import read_stored_card
from functions.common.observability import (
    TURNAROUND_METRIC,
    StepSeconds,
    add_metric_with_dimension,
    add_metric_with_dimensions,
    logger,
    metrics,
    record_run_ended,
    tracer,
)
from functions.common.source_headers import unpack_source_headers
from functions.postprocess.key_slices import key_slice_ids, read_key_slices
from functions.postprocess.results import (
    ResultsBuilder,
    build_result_objects,
    cap_findings,
    key_slice_indices,
)
from imaging_ai.async_inference import AsyncInferenceNotification
from imaging_ai.contracts import (
    RESULT_NAMES,
    TERMINAL_STAGES,
    SiteResultMessage,
    Stage,
    result_key,
)
from imaging_ai.drift import FINDING_VOLUMES_ATTRIBUTE, FINDINGS_ATTRIBUTE
from imaging_ai.errors import ContractError, PipelineError
from imaging_ai.model_io import ModelOutputMeta, unpack_model_output
from imaging_ai.state import RunKey, RunState, RunStateStore, StageConflict

# Stages in which postprocess still has work to do on a run.
_WORKABLE = (Stage.INFERRING, Stage.REPORTED)
# Lambda's longest timeout: a lease outlives any invocation that could still be running.
DEFAULT_LEASE_S = 900.0
# CloudWatch names the stack's alarms and dashboard read (cdk/imaging_ai_infra/names.py).
END_TO_END_METRIC = "EndToEndSeconds"
STAGE_METRIC = "StageSeconds"


class PostprocessOutcome(StrEnum):
    DELIVERED = "DELIVERED"
    DUPLICATE = "DUPLICATE"
    FAILED = "FAILED"


class RunNotReady(PipelineError):
    """The result arrived before the run was recorded as INFERRING; retry later."""


class PostprocessService:
    def __init__(
        self,
        store: StudyObjectStore,
        state: RunStateStore,
        notifier: SiteNotifier,
        results_builder: ResultsBuilder = build_result_objects,
    ) -> None:
        self._store = store
        self._state = state
        self._notifier = notifier
        self._build = results_builder

    @tracer.capture_method
    def handle(
        self, notification: AsyncInferenceNotification, lease_s: float = DEFAULT_LEASE_S
    ) -> PostprocessOutcome:
        """Handle one notification; `lease_s` must cover the rest of this invocation."""
        site, study, run_id = parse_input_location(notification.request_parameters.input_location)
        run = RunKey(site, study, run_id)
        logger.append_keys(site=site, pseudo_study_uid=study, run_id=run_id)
        current = self._state.get(run)
        if current is None:
            return self._fail(run, None, "inference result for a run that was never received")
        if current.stage in TERMINAL_STAGES:
            logger.info("duplicate inference notification", stage=current.stage.value)
            metrics.add_metric(name="DuplicateInferenceResults", unit=MetricUnit.Count, value=1)
            return PostprocessOutcome.DUPLICATE
        if notification.invocation_status == "Failed":
            reason = notification.failure_reason or "no reason given"
            return self._fail(run, current.model_name, f"inference failed: {reason[:300]}")
        if current.stage in (Stage.RECEIVED, Stage.PREPROCESSED):
            raise RunNotReady("inference result arrived before the run was INFERRING")
        # Only the lease holder builds, writes and announces: concurrent copies of the same
        # notification can no longer each write results or each send RESULT_READY.
        work = self._state.claim_work(run, _WORKABLE, lease_s)
        if work is None:
            logger.info("duplicate inference notification")
            metrics.add_metric(name="DuplicateInferenceResults", unit=MetricUnit.Count, value=1)
            return PostprocessOutcome.DUPLICATE
        claimed, holder = work
        try:
            keys = {name: result_key(site, study, run_id, name) for name in RESULT_NAMES}
            model_version = claimed.attributes.get("model_version")
            if claimed.stage == Stage.INFERRING:
                model_version = self._report(notification, run, claimed, keys)
            self._deliver(run, claimed.model_name, model_version, keys)
        except StageConflict as conflict:
            logger.warning("another delivery advanced this run", stage=str(conflict.actual))
            return PostprocessOutcome.DUPLICATE
        except ContractError as error:
            return self._fail(run, claimed.model_name, f"result refused: {error}")
        finally:
            self._state.release(run, holder)
        metrics.add_metric(name="ResultsDelivered", unit=MetricUnit.Count, value=1)
        if claimed.attributes.get("shadow") == "true":
            # A shadow-mode model's results: stored and told to the site, which keeps them
            # on the edge instead of delivering them (counted apart to compare before go-live).
            metrics.add_metric(name="ShadowResults", unit=MetricUnit.Count, value=1)
        self._record_latency(run)
        return PostprocessOutcome.DELIVERED

    def _record_latency(self, run: RunKey) -> None:
        """EndToEndSeconds (manifest written → site told) and StageSeconds per stage."""
        delivered = self._state.get(run)
        if delivered is None:
            return
        end = delivered.stage_times.get(Stage.DELIVERED)
        created_at = delivered.attributes.get("manifest_created_at")
        if end is not None and created_at:
            started = datetime.fromisoformat(created_at)
            if started.tzinfo is None:
                started = started.replace(tzinfo=UTC)
            seconds = max(0.0, (end - started).total_seconds())
            metrics.add_metric(name=END_TO_END_METRIC, unit=MetricUnit.Seconds, value=seconds)
            logger.info("run delivered", end_to_end_seconds=round(seconds, 3))
        record_run_ended(run.site, delivered.model_name, Stage.DELIVERED.value.lower())
        group = {"site": run.site, "model": delivered.model_name or "unknown"}
        for stage, seconds in delivered.stage_latencies_s().items():
            add_metric_with_dimension(
                STAGE_METRIC, MetricUnit.Seconds, seconds, "stage", stage.value
            )
            add_metric_with_dimensions(
                TURNAROUND_METRIC, MetricUnit.Seconds, seconds, {**group, "stage": stage.value}
            )

    @tracer.capture_method
    def _report(
        self,
        notification: AsyncInferenceNotification,
        run: RunKey,
        current: RunState,
        keys: dict[str, str],
    ) -> str:
        location = notification.response_parameters.output_location
        if not location:
            raise ContractError("completed notification has no output location")
        steps = StepSeconds()
        with steps.step("read_output"):
            labels, output = unpack_model_output(self._store.read_uri(location))
        meta = output.input
        if (meta.site, meta.pseudo_study_uid, meta.run_id) != (
            run.site,
            run.pseudo_study_uid,
            run.run_id,
        ):
            raise ContractError("inference output belongs to another run")
        card = read_stored_card(self._store, output.model_name, output.model_version)
        with steps.step("read_headers"):
            headers = self._source_headers(run)
        if [str(ds.SOPInstanceUID) for ds in headers] != meta.sop_instance_uids:
            raise ContractError("stored source headers do not match the model input's slices")
        predecessor = self._predecessor_sr(run, current.attributes.get("revises_run_id"))
        reported, unreported = cap_findings(output, card.max_findings)
        with steps.step("read_key_slices"):
            key_slices = self._key_slices(current, headers, labels, reported)
        with steps.step("build_seg_sr_fhir"):
            objects = self._build(
                headers, labels, reported, card, run.run_id, predecessor, unreported, key_slices
            )
        with steps.step("encrypt_write"):
            for name, key in keys.items():
                self._store.write_encrypted(key, objects[name], run.site, run.pseudo_study_uid)
        self._state.advance(
            run,
            Stage.REPORTED,
            {
                "model_version": output.model_version,
                "weights_sha256": output.weights_sha256,
                FINDINGS_ATTRIBUTE: str(len(output.findings)),
                "findings_reported": str(len(reported.findings)),
                FINDING_VOLUMES_ATTRIBUTE: json.dumps(
                    [round(f.volume_mm3, 1) for f in output.findings]
                ),
            },
        )
        metrics.add_metric(name="Findings", unit=MetricUnit.Count, value=len(output.findings))
        if unreported:
            metrics.add_metric(name="FindingsNotReported", unit=MetricUnit.Count, value=unreported)
        if output.critical:
            # The report carries the critical mark; the edge notifies the site on it.
            metrics.add_metric(name="CriticalFindings", unit=MetricUnit.Count, value=1)
        logger.info(
            "results written",
            findings=len(output.findings),
            not_reported=unreported,
            critical=output.critical,
            step_seconds=steps.seconds,
        )
        return output.model_version

    def _deliver(
        self, run: RunKey, model_name: str | None, model_version: str | None, keys: dict[str, str]
    ) -> None:
        self._notifier.send(
            SiteResultMessage(
                kind="RESULT_READY",
                site=run.site,
                pseudo_study_uid=run.pseudo_study_uid,
                run_id=run.run_id,
                result_keys=keys,
                model_name=model_name,
                model_version=model_version,
            )
        )
        self._state.advance(run, Stage.DELIVERED)

    def _key_slices(
        self,
        current: RunState,
        headers: list[Dataset],
        labels: npt.NDArray[np.uint8],
        output: ModelOutputMeta,
    ) -> dict[int, npt.NDArray[np.float32]]:
        """The de-identified pixels the key images show (the run's own series upload)."""
        manifest_key = current.attributes.get("manifest_key")
        if not manifest_key:
            raise ContractError("the run records no manifest: key images cannot be built")
        indices = key_slice_indices(labels, output)
        wanted = {key_slice_ids(headers[k]): k for k in indices}
        return read_key_slices(self._store, manifest_key, output.input.pseudo_series_uid, wanted)

    def _source_headers(self, run: RunKey) -> list[Dataset]:
        payload = self._store.read_encrypted(
            source_headers_key(run.site, run.pseudo_study_uid, run.run_id),
            run.site,
            run.pseudo_study_uid,
        )
        return unpack_source_headers(payload)

    def _predecessor_sr(self, run: RunKey, revises_run_id: str | None) -> Dataset | None:
        if not revises_run_id:
            return None
        key = result_key(run.site, run.pseudo_study_uid, revises_run_id, "sr.dcm")
        try:
            payload = self._store.read_encrypted(key, run.site, run.pseudo_study_uid)
        except ObjectMissing:
            logger.warning("revised run has no SR; writing a fresh one", revises=revises_run_id)
            return None
        return pydicom.dcmread(io.BytesIO(payload))

    def _fail(self, run: RunKey, model_name: str | None, reason: str) -> PostprocessOutcome:
        logger.warning("run failed", reason=reason)
        metrics.add_metric(name="RunsFailed", unit=MetricUnit.Count, value=1)
        self._notifier.fail_run(self._state, run, reason, model_name)
        return PostprocessOutcome.FAILED
