"""The contracts every unit speaks: S3 keys, the manifest, run states and site messages."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from imaging_ai.errors import ContractError

MANIFEST_SCHEMA_VERSION: Final = "1.1"
MANIFEST_NAME = "manifest.json.enc"
# A STAT study's commit marker: the S3 event carries only the key (not the encrypted content,
# nor metadata or tags), so the key is what routes a STAT study to the high-priority queue.
STAT_MANIFEST_NAME: Final = "manifest.stat.json.enc"
# The result objects of a run, by name (S3 keys, the edge's delivery folder).
SR_NAME: Final = "sr.dcm"
SEG_NAME: Final = "seg.dcm"
KEY_IMAGES_NAME: Final = "keyimages.dcm"  # burned-in Secondary Capture for plain viewers
BUNDLE_NAME: Final = "report.bundle.json"
# What may go to a PACS (each destination is configured with its own subset).
DICOM_RESULT_NAMES: Final = (SR_NAME, SEG_NAME, KEY_IMAGES_NAME)
RESULT_NAMES: Final = (*DICOM_RESULT_NAMES, BUNDLE_NAME)

# A DICOM UID (PS3.5 9.1): digits and dots, no leading zero per component, at most 64 chars.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Site codes appear in S3 keys, queue names and IAM policies: keep them boring.
_SITE = re.compile(r"^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A model's name as its model card spells it: it names S3 keys, endpoints and log fields.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# A model version as its card spells it: it names S3 keys and registry folders too.
MODEL_VERSION_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"


class Priority(StrEnum):
    """How urgently a run is read. Not PHI: it travels in manifests, keys, logs and metrics."""

    ROUTINE = "ROUTINE"
    STAT = "STAT"


def priority_rank(priority: Priority) -> int:
    """Sort key: STAT before ROUTINE (a stable sort keeps arrival order within each)."""
    return 0 if priority is Priority.STAT else 1


# The run's priority on an InvokeEndpointAsync request (its CustomAttributes, which SageMaker
# hands to the container unchanged): "priority=STAT" or "priority=ROUTINE".
_PRIORITY_ATTRIBUTE = "priority="


def priority_custom_attributes(priority: Priority) -> str:
    return f"{_PRIORITY_ATTRIBUTE}{priority.value}"


def priority_from_custom_attributes(custom_attributes: str) -> Priority:
    """The priority a request names; ROUTINE when it names none (or one we do not know)."""
    for item in custom_attributes.split(","):
        name, _, value = item.strip().partition("=")
        if f"{name}=" == _PRIORITY_ATTRIBUTE and value.strip().upper() in Priority.__members__:
            return Priority(value.strip().upper())
    return Priority.ROUTINE


def check_uid(value: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise ContractError("not a DICOM UID")
    return value


def check_site(value: str) -> str:
    if not _SITE.match(value):
        raise ContractError("site must be 3-32 chars of a-z, 0-9 and '-'")
    return value


def check_run_id(value: str) -> str:
    if not _RUN_ID.match(value):
        raise ContractError("run id must be 1-64 chars of A-Z, a-z, 0-9, '_' and '-'")
    return value


# ---- S3 keys -------------------------------------------------------------------------------
# Each top-level prefix of the data bucket stands next to the keys under it
# (cdk/imaging_ai_infra/names.py copies them for IAM; the infrastructure tests compare).

INCOMING_PREFIX: Final = "incoming/"


def series_key(site: str, pseudo_study_uid: str, pseudo_series_uid: str) -> str:
    return (
        f"{INCOMING_PREFIX}{check_site(site)}/{check_uid(pseudo_study_uid)}/"
        f"{check_uid(pseudo_series_uid)}.tar.enc"
    )


def manifest_name(priority: Priority) -> str:
    return STAT_MANIFEST_NAME if priority is Priority.STAT else MANIFEST_NAME


def manifest_key(site: str, pseudo_study_uid: str, priority: Priority = Priority.ROUTINE) -> str:
    return (
        f"{INCOMING_PREFIX}{check_site(site)}/{check_uid(pseudo_study_uid)}/"
        f"{manifest_name(priority)}"
    )


PREPROCESSED_PREFIX: Final = "preprocessed/"


def preprocessed_key(site: str, pseudo_study_uid: str, run_id: str) -> str:
    return (
        f"{PREPROCESSED_PREFIX}{check_site(site)}/{check_uid(pseudo_study_uid)}/"
        f"{check_run_id(run_id)}/input.npz"
    )


INFERENCE_OUTPUT_PREFIX: Final = "inference-output/"
INFERENCE_FAILURE_PREFIX: Final = "inference-failure/"  # the endpoint's failure output


def inference_output_prefix(site: str, pseudo_study_uid: str, run_id: str) -> str:
    return (
        f"{INFERENCE_OUTPUT_PREFIX}{check_site(site)}/{check_uid(pseudo_study_uid)}/"
        f"{check_run_id(run_id)}/"
    )


RESULTS_PREFIX: Final = "results/"


def result_key(site: str, pseudo_study_uid: str, run_id: str, name: str) -> str:
    if name not in RESULT_NAMES:
        raise ContractError("unknown result object name")
    return (
        f"{RESULTS_PREFIX}{check_site(site)}/{check_uid(pseudo_study_uid)}/"
        f"{check_run_id(run_id)}/{name}.enc"
    )


MANIFEST_NAMES: Final = (MANIFEST_NAME, STAT_MANIFEST_NAME)


def parse_manifest_key(key: str) -> tuple[str, str]:
    """Return (site, pseudo_study_uid) of a manifest key, or raise ContractError."""
    parts = key.split("/")
    if len(parts) != 4 or f"{parts[0]}/" != INCOMING_PREFIX or parts[3] not in MANIFEST_NAMES:
        raise ContractError("not a manifest key")
    return check_site(parts[1]), check_uid(parts[2])


def encryption_context(site: str, pseudo_study_uid: str) -> dict[str, str]:
    """The AWS Encryption SDK context bound to every object of a study, checked on decrypt."""
    return {"site": check_site(site), "pseudo_study_uid": check_uid(pseudo_study_uid)}


# ---- Manifest ------------------------------------------------------------------------------


class ManifestInstance(BaseModel):
    model_config = ConfigDict(frozen=True)
    sop_instance_uid: str
    sop_class_uid: str

    _check = field_validator("sop_instance_uid", "sop_class_uid")(check_uid)


class ManifestSeries(BaseModel):
    """One encrypted tar object per series, with its integrity figures."""

    model_config = ConfigDict(frozen=True)
    pseudo_series_uid: str
    modality: str
    object_key: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the encrypted object as stored
    size_bytes: int = Field(ge=0)
    instances: list[ManifestInstance]

    _check = field_validator("pseudo_series_uid")(check_uid)


class DeidRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    profile: str = "PS3.15 Annex E Basic Application Level Confidentiality Profile"
    table_edition: str
    options: list[str]
    method_codes: list[str]  # CID 7050 code values, e.g. "113100"


class ModelRun(BaseModel):
    """One model's run of an upload: a study matching several models has one run each."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run_id: str
    model_name: str = Field(pattern=MODEL_NAME_PATTERN)
    # Shadow mode (the site's choice per model): the run is analyzed and its results are
    # stored in the cloud and on the edge, but never delivered to the PACS or the EHR.
    shadow: bool = False
    # Pinned by an operator's re-run (`edge-forwarder rerun STUDY --model NAME@VERSION`): the
    # run is made by this kept version. None: the model's current version.
    model_version: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)
    # A re-run after late instances names the same model's run it revises, so its SR can
    # point back.
    revises_run_id: str | None = None

    _check_run = field_validator("run_id")(check_run_id)


class Manifest(BaseModel):
    """The commit marker of an upload: written last; the only object that starts processing.

    One upload (the de-identified series, sent once) serves every model the study was routed
    to: `runs` names one run per model. Schema 1.0 named a single `run_id` and `model_name`;
    it is still read (as one run), so a forwarder not yet upgraded keeps working.
    """

    model_config = ConfigDict(frozen=True)
    schema_version: Literal["1.0", "1.1"] = MANIFEST_SCHEMA_VERSION
    site: str
    pseudo_study_uid: str
    runs: list[ModelRun] = Field(min_length=1)
    series: list[ManifestSeries]
    deidentification: DeidRecord
    forwarder_version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # STAT studies go first at every stage, each run of the upload; the manifest's key says
    # the same (manifest_key).
    priority: Priority = Priority.ROUTINE

    _check_site = field_validator("site")(check_site)
    _check_uid = field_validator("pseudo_study_uid")(check_uid)

    @model_validator(mode="before")
    @classmethod
    def _one_run_of_schema_1_0(cls, data: object) -> object:
        if isinstance(data, dict) and "runs" not in data and "run_id" in data:
            data = dict(data)
            run = {name: data.pop(name) for name in _SINGLE_RUN_FIELDS if name in data}
            data["runs"] = [run]
        return data

    @field_validator("runs")
    @classmethod
    def _one_run_per_model(cls, runs: list[ModelRun]) -> list[ModelRun]:
        if len({run.model_name for run in runs}) != len(runs):
            raise ValueError("a manifest names each model once")
        if len({run.run_id for run in runs}) != len(runs):
            raise ValueError("a manifest names each run once")
        return runs


# The fields a schema 1.0 manifest used for its single run.
_SINGLE_RUN_FIELDS: Final = ("run_id", "model_name", "revises_run_id")


# ---- Run state -----------------------------------------------------------------------------


class Stage(StrEnum):
    RECEIVED = "RECEIVED"
    PREPROCESSED = "PREPROCESSED"
    INFERRING = "INFERRING"
    REPORTED = "REPORTED"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    # The study is outside the model's intended use (no series qualifies): not an error, and
    # no findings are delivered. Terminal like FAILED, but a site counts and reads it apart.
    NOT_ANALYZED = "NOT_ANALYZED"


# Allowed forward moves; FAILED is reachable from any non-terminal stage, NOT_ANALYZED from
# the stages before inference (only preprocessing judges intended use).
NEXT_STAGE: dict[Stage, Stage] = {
    Stage.RECEIVED: Stage.PREPROCESSED,
    Stage.PREPROCESSED: Stage.INFERRING,
    Stage.INFERRING: Stage.REPORTED,
    Stage.REPORTED: Stage.DELIVERED,
}
TERMINAL_STAGES: frozenset[Stage] = frozenset({Stage.DELIVERED, Stage.FAILED, Stage.NOT_ANALYZED})
NOT_ANALYZED_FROM: tuple[Stage, ...] = (Stage.RECEIVED, Stage.PREPROCESSED)


# ---- Messages to the site ------------------------------------------------------------------


class SiteMessageKind(StrEnum):
    RESULT_READY = "RESULT_READY"
    FAILED = "FAILED"
    NOT_ANALYZED = "NOT_ANALYZED"  # outside the model's intended use; `reason` says why


# A reason is one line of text for an operator: no control characters, bounded.
_REASON = r"^[^\x00-\x1f\x7f]*$"


class SiteResultMessage(BaseModel):
    """What the cloud tells a site on its results queue: results ready, a failure, or that
    the study was not analyzed (outside the model's intended use).

    The edge treats it as untrusted input: every field is checked here, before any of it
    names a file, an S3 key or a journal row. Result keys must be exactly the contract's
    keys of this site, study and run.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: Literal["1.0"] = "1.0"
    kind: SiteMessageKind
    site: str
    pseudo_study_uid: str
    run_id: str
    result_keys: dict[str, str] = Field(default_factory=dict, max_length=len(RESULT_NAMES))
    reason: str | None = Field(default=None, max_length=1000, pattern=_REASON)
    model_name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    model_version: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)

    @field_validator("site", "pseudo_study_uid", "run_id")
    @classmethod
    def _contract_patterns(cls, value: str, info: ValidationInfo) -> str:
        # A ValueError, so a bad field is a ValidationError naming it, like every other.
        check = {"site": check_site, "pseudo_study_uid": check_uid, "run_id": check_run_id}
        try:
            return check[str(info.field_name)](value)
        except ContractError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _keys_are_the_contract_keys(self) -> SiteResultMessage:
        for name, key in self.result_keys.items():
            if name not in RESULT_NAMES:
                raise ValueError("result_keys names an object the contract does not define")
            if key != result_key(self.site, self.pseudo_study_uid, self.run_id, name):
                raise ValueError("a result key is not the contract key of this run")
        if self.kind == "RESULT_READY" and not self.result_keys:
            raise ValueError("RESULT_READY names no result object")
        if self.kind in ("FAILED", "NOT_ANALYZED") and self.result_keys:
            raise ValueError(f"{self.kind} carries no result objects")
        return self


MODELS_PREFIX: Final = "models/"


def model_card_key(model_name: str, version: str | None = None) -> str:
    """Where the Lambdas read a model's `model.json` in the data bucket: the current version
    at `models/NAME/model.json`, every kept version at `models/NAME/VERSION/model.json`."""
    if not re.match(MODEL_NAME_PATTERN, model_name):
        raise ContractError("model name must be 1-63 chars of A-Z, a-z, 0-9, '.', '_' and '-'")
    if version is None:
        return f"{MODELS_PREFIX}{model_name}/model.json"
    if not re.match(MODEL_VERSION_PATTERN, version):
        raise ContractError("model version must be 1-64 chars of A-Z, a-z, 0-9, '.', '_', '+', '-'")
    return f"{MODELS_PREFIX}{model_name}/{version}/model.json"


# ---- Names shared by the local runtime and the CDK stack ----------------------------------
# (Each Lambda stage's queues are named by its entry in lambda_stages.toml.)

LOCAL_NAMES = {
    "data_bucket": "imaging-ai-data",
    "state_table": "imaging-ai-state",
    "inference_success_topic": "imaging-ai-inference-success",
    "inference_error_topic": "imaging-ai-inference-error",
    "endpoint_name": "imaging-ai-demo",  # `containers/inference/deploy.py`'s default
    "endpoint_prefix": "imaging-ai-",  # + model name: one local async endpoint per model
}


def site_results_queue_name(site: str) -> str:
    return f"imaging-ai-results-{check_site(site)}"
