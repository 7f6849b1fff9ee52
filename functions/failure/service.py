"""Turn a dead-lettered trigger into a FAILED run with a reason and a message to its site."""

from __future__ import annotations

import json
from enum import StrEnum

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from functions.common.adapters import SiteNotifier, StudyObjectStore
from functions.common.events import ObjectCreatedEvent, SnsEnvelope
from functions.common.keys import parse_input_location, unreadable_manifest_run_id
from functions.common.observability import logger, metrics, tracer
from imaging_ai.contracts import Manifest, parse_manifest_key
from imaging_ai.errors import PipelineError
from imaging_ai.state import RunKey, RunStateStore


class FailureOutcome(StrEnum):
    RECORDED = "RECORDED"
    ALREADY_ENDED = "ALREADY_ENDED"
    UNATTRIBUTABLE = "UNATTRIBUTABLE"


class FailureService:
    def __init__(
        self, store: StudyObjectStore, state: RunStateStore, notifier: SiteNotifier
    ) -> None:
        self._store = store
        self._state = state
        self._notifier = notifier

    @tracer.capture_method
    def handle(self, body: str, receive_count: int) -> FailureOutcome:
        attributed = self._attribute(body)
        if attributed is None:
            # No site can be named, so nobody can be told: alarm on this metric instead.
            logger.error("dead-lettered message names no run", receive_count=receive_count)
            metrics.add_metric(name="UnattributableFailures", unit=MetricUnit.Count, value=1)
            return FailureOutcome.UNATTRIBUTABLE
        runs, stage = attributed
        reason = f"{stage} failed after all retries (message dead-lettered)"
        recorded = False
        # A manifest names one run per model: each of them that has not ended fails.
        for run in runs:
            logger.warning(
                "dead-lettered run",
                site=run.site,
                pseudo_study_uid=run.pseudo_study_uid,
                run_id=run.run_id,
                stage=stage,
            )
            metrics.add_metric(name="RunsDeadLettered", unit=MetricUnit.Count, value=1)
            recorded = self._notifier.fail_run(self._state, run, reason) or recorded
        return FailureOutcome.RECORDED if recorded else FailureOutcome.ALREADY_ENDED

    def _attribute(self, body: str) -> tuple[list[RunKey], str] | None:
        """The runs a trigger was about, and which stage it was triggering."""
        try:
            document = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(document, dict):
            return None
        try:
            if document.get("detail-type") == "Object Created":
                event = ObjectCreatedEvent.model_validate(document)
                return self._manifest_runs(event), "preprocess"
            if document.get("Type") == "Notification":
                envelope = SnsEnvelope.model_validate(document)
                location = envelope.Message.request_parameters.input_location
                return [RunKey(*parse_input_location(location))], "postprocess"
        except (ValidationError, PipelineError):
            return None
        return None

    def _manifest_runs(self, event: ObjectCreatedEvent) -> list[RunKey]:
        key = event.object_key
        site, study = parse_manifest_key(key)
        try:
            manifest = Manifest.model_validate_json(self._store.read_encrypted(key, site, study))
            return [RunKey(site, study, run.run_id) for run in manifest.runs]
        except (PipelineError, ValidationError):
            # Same id preprocess uses for a manifest it cannot read.
            return [RunKey(site, study, unreadable_manifest_run_id(key, event.detail.object.etag))]
