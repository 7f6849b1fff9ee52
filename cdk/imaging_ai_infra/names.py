"""Names the stack shares with the runtime, copied here because `cdk/` imports no runtime code.

Source of truth: `imaging_ai/contracts.py` (S3 key layout, LOCAL_NAMES, site_results_queue_name)
and `imaging_ai/state.py` (table key schema). A change there must be mirrored here; the
infrastructure tests compare the two so a drift fails CI. The Lambda stages are not copied:
both sides read the one data file `imaging_ai/lambda_stages.toml`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Final, TypedDict

# S3 prefixes of the one data bucket (contracts.py: series_key, preprocessed_key, ...).
INCOMING_PREFIX: Final = "incoming/"
PREPROCESSED_PREFIX: Final = "preprocessed/"
INFERENCE_OUTPUT_PREFIX: Final = "inference-output/"
INFERENCE_FAILURE_PREFIX: Final = "inference-failure/"
RESULTS_PREFIX: Final = "results/"
MODELS_PREFIX: Final = "models/"
MANIFEST_NAME: Final = "manifest.json.enc"  # contracts.MANIFEST_NAME: the commit marker
STAT_MANIFEST_NAME: Final = "manifest.stat.json.enc"  # contracts.STAT_MANIFEST_NAME

# State table (state.py: PARTITION_KEY, SORT_KEY).
STATE_PARTITION_KEY: Final = "pk"
STATE_SORT_KEY: Final = "sk"

# Custom metrics the functions emit through Powertools (dashboard and latency alarms).
METRICS_NAMESPACE: Final = "ImagingAI"

# contracts._SITE: site codes appear in keys, queue names and IAM policies.
_SITE = re.compile(r"^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$")


def check_site(site: str) -> str:
    if not _SITE.match(site):
        raise ValueError(f"site {site!r} must be 3-32 chars of a-z, 0-9 and '-'")
    return site


def resource_prefix(stage: str) -> str:
    """Physical-name prefix: prod keeps the contract's names; other stages insert the stage,
    so a dev stack can share an account with prod."""
    return "imaging-ai" if stage == "prod" else f"imaging-ai-{stage}"


def site_results_queue_name(stage: str, site: str) -> str:
    """contracts.site_results_queue_name (exactly, in prod): the queue a site's forwarder polls."""
    return f"{resource_prefix(stage)}-results-{check_site(site)}"


# Metric names the functions emit (functions/*/service.py; Powertools Metrics adds the
# `service` dimension = POWERTOOLS_SERVICE_NAME = the function's short name).
METRIC_STUDIES_RECEIVED: Final = ("preprocess", "InferenceRequests")
METRIC_STUDIES_REPORTED: Final = ("postprocess", "ResultsDelivered")
METRIC_STUDIES_FAILED: Final = (
    ("preprocess", "StudiesRefused"),
    ("postprocess", "RunsFailed"),
    ("failure", "RunsDeadLettered"),
)
# End-to-end seconds from manifest written to site told (postprocess). Per-stage latency on
# the dashboard comes from AWS metrics (Lambda Duration, SageMaker TotalProcessingTime and
# TimeInBacklog), which exist whether or not a function emits its own timings.
METRIC_END_TO_END_SECONDS: Final = ("postprocess", "EndToEndSeconds")
# Postprocess also emits seconds to reach each run stage, with an extra `stage` dimension.
METRIC_STAGE_SECONDS: Final = ("postprocess", "StageSeconds")
# The value report's figures, live (functions/common/observability.py): every function that
# ends a run emits RunsEnded (site, model, outcome); postprocess emits TurnaroundSeconds
# (site, model, stage). Sites and models come and go: the dashboard finds them by SEARCH.
METRIC_RUNS_ENDED: Final = ("*", "RunsEnded")
METRIC_TURNAROUND_SECONDS: Final = ("postprocess", "TurnaroundSeconds")
# The drift function (functions/drift/service.py): a score per feature and a verdict per
# site and model; DriftDetected without site or model counts them all (the alarm's).
METRIC_DRIFT_SCORE: Final = ("drift", "DriftScore")
METRIC_DRIFT_DETECTED: Final = ("drift", "DriftDetected")


STAGE_TABLE: Final = Path(__file__).resolve().parents[2] / "imaging_ai" / "lambda_stages.toml"


class LambdaStageEntry(TypedDict, total=False):
    """One `[[stage]]` of the table (the runtime's type of it: lambda_stages.LambdaStage)."""

    name: str
    description: str
    trigger: str
    timeout_s: int
    memory_mb: int
    reserved_concurrency: list[int]  # prod, other stages
    batch_size: int
    reads: list[str]
    writes: list[str]
    invokes_endpoint: bool
    reads_manifests: bool
    stat_headroom: int  # > 0: a STAT queue, and this many reserved instances kept for it
    schedule_minutes: int
    writes_state: bool  # absent: True


def lambda_stages(trigger: str | None = None) -> list[LambdaStageEntry]:
    """The table's entries in table order; only those fed by `trigger` when given."""
    entries: list[LambdaStageEntry] = tomllib.loads(STAGE_TABLE.read_text())["stage"]
    return [entry for entry in entries if trigger is None or entry["trigger"] == trigger]


def lambda_stage(name: str) -> LambdaStageEntry:
    """The table's entry for the function `name`."""
    for entry in lambda_stages():
        if entry["name"] == name:
            return entry
    raise KeyError(f"no Lambda stage {name!r} in {STAGE_TABLE}")
