"""Preprocess a committed study: verify, select, build, resample, store, call the endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from functions.common.adapters import SiteNotifier, StudyObjectStore
from functions.common.keys import inference_id, source_headers_key, unreadable_manifest_run_id
from functions.common.model_cards import read_stored_card
from functions.common.observability import StepSeconds, logger, metrics, tracer
from functions.common.source_headers import pack_source_headers, volume_header_bytes
from functions.preprocess.adapters import ModelEndpoints
from functions.preprocess.series import (
    NotAnalyzed,
    candidate_series,
    check_deidentified,
    check_matches_manifest,
    read_series_tar,
)
from imaging_ai.contracts import (
    INFERENCE_OUTPUT_PREFIX,
    Manifest,
    ManifestSeries,
    ModelRun,
    Stage,
    inference_output_prefix,
    parse_manifest_key,
    preprocessed_key,
)
from imaging_ai.drift import DRIFT_INPUT_ATTRIBUTE, RunProfile, input_profile
from imaging_ai.errors import ContractError, PipelineError
from imaging_ai.intended_use import Skip, SkipReason, screen_headers, screen_volume
from imaging_ai.model_card import ModelCard
from imaging_ai.model_io import ModelInputMeta, pack_model_input
from imaging_ai.state import RunKey, RunStateStore, StageConflict
from imaging_ai.volume import GeometryError, Volume, build_volume, prepare_model_input

# Stages in which preprocess still has work to do on a run.
_WORKABLE = (Stage.RECEIVED, Stage.PREPROCESSED)
# Lambda's longest timeout: a lease outlives any invocation that could still be running.
DEFAULT_LEASE_S = 900.0


class PreprocessOutcome(StrEnum):
    SUBMITTED = "SUBMITTED"
    DUPLICATE = "DUPLICATE"
    REFUSED = "REFUSED"
    NOT_ANALYZED = "NOT_ANALYZED"


@dataclass(frozen=True)
class ManifestRef:
    """Which manifest object an event announced."""

    bucket: str
    key: str
    etag: str | None = None


class PreprocessService:
    def __init__(
        self,
        store: StudyObjectStore,
        state: RunStateStore,
        endpoint: ModelEndpoints,
        notifier: SiteNotifier,
    ) -> None:
        self._store = store
        self._state = state
        self._endpoint = endpoint
        self._notifier = notifier

    @tracer.capture_method
    def handle(
        self, ref: ManifestRef, lease_s: float = DEFAULT_LEASE_S
    ) -> dict[str, PreprocessOutcome]:
        """Process one manifest event: each run it names (one per model) on its own.

        Returns each run's outcome by run id. `lease_s` must cover the rest of this
        invocation. One run's failure never stops another's: a refused run is FAILED alone,
        and an unexpected error is raised only after every other run had its turn (the event
        comes back, and the runs already done see a duplicate).
        """
        if ref.bucket != self._store.bucket:
            raise ContractError("manifest event names another bucket")
        site, pseudo_study_uid = parse_manifest_key(ref.key)
        try:
            manifest = self._read_manifest(ref.key, site, pseudo_study_uid)
        except PipelineError as error:
            run = RunKey(site, pseudo_study_uid, unreadable_manifest_run_id(ref.key, ref.etag))
            return {run.run_id: self._refuse(run, None, f"manifest refused: {error}")}
        outcomes: dict[str, PreprocessOutcome] = {}
        unexpected: Exception | None = None
        for model_run in manifest.runs:
            run = RunKey(site, pseudo_study_uid, model_run.run_id)
            logger.append_keys(
                site=site, pseudo_study_uid=pseudo_study_uid, run_id=run.run_id,
                model_name=model_run.model_name, priority=manifest.priority.value,
            )  # fmt: skip
            try:
                outcomes[run.run_id] = self._handle_run(ref, manifest, model_run, run, lease_s)
            except Exception as error:  # raised below, after the other runs had their turn
                logger.exception("run interrupted", run_id=run.run_id)
                unexpected = unexpected or error
        if unexpected is not None:
            raise unexpected
        return outcomes

    def _handle_run(
        self,
        ref: ManifestRef,
        manifest: Manifest,
        model_run: ModelRun,
        run: RunKey,
        lease_s: float,
    ) -> PreprocessOutcome:
        attributes = {
            "manifest_key": ref.key,
            # Postprocess measures end-to-end latency from here (EndToEndSeconds).
            "manifest_created_at": manifest.created_at.isoformat(),
            "priority": manifest.priority.value,
        }
        if model_run.revises_run_id:
            attributes["revises_run_id"] = model_run.revises_run_id
        if model_run.shadow:
            attributes["shadow"] = "true"
        if model_run.model_version:
            attributes["model_version"] = model_run.model_version  # pinned by a re-run
        self._state.start(run, model_run.model_name, attributes)
        # Only the holder of the run's lease may build or call the endpoint: two concurrent
        # deliveries can no longer both see PREPROCESSED and both invoke.
        work = self._state.claim_work(run, _WORKABLE, lease_s)
        if work is None:
            logger.info("duplicate manifest event")
            metrics.add_metric(name="DuplicateManifestEvents", unit=MetricUnit.Count, value=1)
            return PreprocessOutcome.DUPLICATE
        claimed, holder = work
        try:
            if claimed.stage == Stage.PREPROCESSED:
                logger.info("resuming a run left unfinished", stage=str(claimed.stage))
            else:
                prepared = self._preprocess(manifest, model_run, run)
                if isinstance(prepared, NotAnalyzed):
                    return self._not_analyzed(run, model_run.model_name, str(prepared))
                # The acquisition's profile rides on the run: the drift monitor reads it.
                self._state.advance(
                    run, Stage.PREPROCESSED, {DRIFT_INPUT_ATTRIBUTE: prepared.model_dump_json()}
                )
            location = self._store.uri(preprocessed_key(run.site, run.pseudo_study_uid, run.run_id))
            run_prefix = inference_output_prefix(run.site, run.pseudo_study_uid, run.run_id)
            queued = self._endpoint.invoke(
                model_run.model_name,
                location,
                inference_id(run.run_id),
                run_prefix.removeprefix(INFERENCE_OUTPUT_PREFIX),
                manifest.priority,
            )
            self._state.advance(
                run,
                Stage.INFERRING,
                {
                    "inference_id": inference_id(run.run_id),
                    "output_location": queued.output_location,
                    # Which endpoint serves it: the model's STAT one or its routine one.
                    "endpoint_name": queued.endpoint_name,
                },
            )
        except StageConflict as conflict:
            # Only after our lease expired mid-run could another delivery have moved it on.
            logger.warning("another delivery advanced this run", stage=str(conflict.actual))
            return PreprocessOutcome.DUPLICATE
        except PipelineError as error:
            return self._refuse(run, model_run.model_name, f"study refused: {error}")
        finally:
            self._state.release(run, holder)
        metrics.add_metric(name="InferenceRequests", unit=MetricUnit.Count, value=1)
        logger.info("model input written and inference requested")
        return PreprocessOutcome.SUBMITTED

    def _read_manifest(self, key: str, site: str, pseudo_study_uid: str) -> Manifest:
        plaintext = self._store.read_encrypted(key, site, pseudo_study_uid)
        try:
            manifest = Manifest.model_validate_json(plaintext)
        except ValidationError:
            raise ContractError("manifest does not match the manifest schema") from None
        if (manifest.site, manifest.pseudo_study_uid) != (site, pseudo_study_uid):
            raise ContractError("manifest content names another site or study than its key")
        return manifest

    @tracer.capture_method
    def _preprocess(
        self, manifest: Manifest, model_run: ModelRun, run: RunKey
    ) -> NotAnalyzed | RunProfile:
        """Write the model input of the chosen series and return its acquisition profile;
        NotAnalyzed (returned: it is an outcome, not an error) when no series is within the
        model's intended use.

        The input names the card's version: the endpoint runs exactly that version, the one
        a re-run pins or the current one."""
        card = read_stored_card(self._store, model_run.model_name, model_run.model_version)
        steps = StepSeconds()
        header_bytes_by_uid: dict[str, bytes] = {}
        selected = self._select(manifest, run, card, steps, header_bytes_by_uid)
        if isinstance(selected, NotAnalyzed):
            return selected
        series, volume = selected
        profile = input_profile(volume.headers[0], volume.voxels)
        with steps.step("resample_normalize"):
            image, grid = prepare_model_input(volume, card)
        meta = ModelInputMeta(
            site=run.site,
            pseudo_study_uid=run.pseudo_study_uid,
            pseudo_series_uid=series.pseudo_series_uid,
            run_id=run.run_id,
            model_name=card.name,
            model_version=card.version,
            source_geometry=volume.geometry,
            model_geometry=grid,
            sop_instance_uids=volume.sop_instance_uids,
        )
        # Postprocess builds SEG/SR from these headers, so it never re-reads the series.
        with steps.step("write_headers"):
            headers = pack_source_headers(volume_header_bytes(volume, header_bytes_by_uid))
            del volume, header_bytes_by_uid
            self._store.write_encrypted(
                source_headers_key(run.site, run.pseudo_study_uid, run.run_id),
                headers,
                run.site,
                run.pseudo_study_uid,
            )
        with steps.step("write_model_input"):
            self._store.write(
                preprocessed_key(run.site, run.pseudo_study_uid, run.run_id),
                pack_model_input(image, meta),
                "application/x-npz",
            )
        logger.info("model input built", step_seconds=steps.seconds)
        metrics.add_metric(
            name="PreprocessedSlices", unit=MetricUnit.Count, value=len(meta.sop_instance_uids)
        )
        return profile

    def _select(
        self,
        manifest: Manifest,
        run: RunKey,
        card: ModelCard,
        steps: StepSeconds,
        header_bytes_by_uid: dict[str, bytes],
    ) -> tuple[ManifestSeries, Volume] | NotAnalyzed:
        """The first candidate (most instances first) within the model's intended use.

        Series are read one at a time, so memory holds one series besides the chosen volume.
        Every series left out is logged with its reason; NotAnalyzed when none qualifies.
        """
        use = card.intended_use
        candidates, skips = candidate_series(manifest, use)
        chosen: tuple[ManifestSeries, Volume] | None = None
        for series in candidates:
            header_bytes_by_uid.clear()
            with (
                steps.step("read_decrypt_untar"),
                self._store.open_encrypted(
                    series.object_key,
                    run.site,
                    run.pseudo_study_uid,
                    series.sha256,
                    series.size_bytes,
                ) as plaintext,
            ):
                datasets = read_series_tar(plaintext, header_bytes_by_uid)
            # Only now is the whole object authenticated and checked against the manifest.
            check_deidentified(datasets)
            check_matches_manifest(datasets, manifest, series)
            skip = screen_headers(series.pseudo_series_uid, datasets, use)
            if skip is None:
                try:
                    with steps.step("build_volume"):
                        volume = build_volume(
                            datasets, use.max_gantry_tilt_deg, use.max_slice_gap_mm
                        )
                except GeometryError as error:
                    skip = Skip(series.pseudo_series_uid, SkipReason.GEOMETRY, str(error))
                else:
                    with steps.step("screen_volume"):
                        skip = screen_volume(series.pseudo_series_uid, volume, use)
            del datasets
            if skip is None:
                chosen = (series, volume)
                break
            skips.append(skip)
        for skip in skips:
            logger.info(
                "series skipped",
                pseudo_series_uid=skip.pseudo_series_uid,
                skip_reason=skip.reason.value,
                detail=skip.detail,
            )
            metrics.add_metric(name="SeriesSkipped", unit=MetricUnit.Count, value=1)
        if chosen is None:
            return NotAnalyzed(skips)
        logger.info("series selected", pseudo_series_uid=chosen[0].pseudo_series_uid)
        return chosen

    def _refuse(self, run: RunKey, model_name: str | None, reason: str) -> PreprocessOutcome:
        logger.warning("study refused", reason=reason, run_id=run.run_id)
        metrics.add_metric(name="StudiesRefused", unit=MetricUnit.Count, value=1)
        self._notifier.fail_run(self._state, run, reason, model_name)
        return PreprocessOutcome.REFUSED

    def _not_analyzed(self, run: RunKey, model_name: str, reason: str) -> PreprocessOutcome:
        logger.info("study not analyzed", reason=reason, run_id=run.run_id)
        metrics.add_metric(name="StudiesNotAnalyzed", unit=MetricUnit.Count, value=1)
        self._notifier.not_analyze_run(self._state, run, reason, model_name)
        return PreprocessOutcome.NOT_ANALYZED
