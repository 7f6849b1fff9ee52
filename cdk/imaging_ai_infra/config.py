"""Stage configuration read once from CDK context (`-c key=value` or cdk.json)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct, Node

from imaging_ai_infra.names import MODELS_PREFIX, check_site

CDK_DIR = Path(__file__).resolve().parent.parent
DEFAULT_ASSET_ROOT = CDK_DIR / ".build"

# GPU families whose instances carry NVMe instance storage: SageMaker refuses a KMS key for the
# ML storage volume there (the instance store is hardware-encrypted instead).
_INSTANCE_STORE_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3dn", "p4d", "p4de", "p5", "p5e")


# A model card's name (contracts.MODEL_NAME_PATTERN) and version (SiteResultMessage's).
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MODEL_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_MODEL_KEYS = frozenset(
    {"name", "version", "artifact", "instance_type", "min_capacity", "max_capacity",
     "scale_to_zero", "stat"}
)  # fmt: skip
_STAT_KEYS = frozenset({"instance_type", "min_capacity", "max_capacity"})
# The model deployed when context names none: the repository's demo model.
DEFAULT_MODEL = {"name": "lung-nodule-demo", "version": "1.0.0"}


@dataclass(frozen=True)
class StatEndpoint:
    """Context `models[].stat`: a second async endpoint of the model that only STAT runs use.

    SageMaker serves an async endpoint's queue in arrival order, so on the routine endpoint a
    STAT request waits for every routine request queued before it. This one never scales to
    zero: a cold start (minutes) would cost more than the routine queue it avoids.
    """

    instance_type: str
    # 1 by default: one instance always up. It doubles the model's idle cost (docs/priority.md).
    min_capacity: int = 1
    max_capacity: int = 1


@dataclass(frozen=True)
class ModelDeployment:
    """One model version served by its own asynchronous endpoint (context `models`)."""

    name: str  # the model card's name: routing rules, manifests and MODEL_ENDPOINTS use it
    version: str
    # model.tar.gz (containers/inference/deploy.py packs a registry folder into one);
    # None: `models/{name}/{version}/model.tar.gz` in the data bucket.
    artifact: str | None
    instance_type: str
    min_capacity: int
    max_capacity: int
    # An idle endpoint goes to zero instances (no GPU cost) and comes back when work waits.
    scale_to_zero: bool
    # The model's second endpoint, for STAT runs only (docs/priority.md); None: STAT runs go
    # to the routine endpoint, marked priority=STAT.
    stat: StatEndpoint | None = None

    @property
    def slug(self) -> str:
        """The name as SageMaker and construct ids accept it (letters, digits, hyphens)."""
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-")

    def artifact_key(self) -> str:
        return f"{MODELS_PREFIX}{self.name}/{self.version}/model.tar.gz"

    @property
    def volume_kms_supported(self) -> bool:
        family = self.instance_type.split(".")[1] if "." in self.instance_type else ""
        return family not in _INSTANCE_STORE_FAMILIES

    def stat_deployment(self) -> ModelDeployment | None:
        """The same model version (artifact, card, container) at the STAT endpoint's capacity."""
        if self.stat is None:
            return None
        return replace(
            self,
            instance_type=self.stat.instance_type,
            min_capacity=self.stat.min_capacity,
            max_capacity=self.stat.max_capacity,
            scale_to_zero=False,
            stat=None,
        )


@dataclass(frozen=True)
class StageConfig:
    """Everything that differs between stages; defaults are the dev stage."""

    stage: str
    sites: tuple[str, ...]
    # Every model this stage serves, each on its own async endpoint (context `models`).
    models: tuple[ModelDeployment, ...]
    inference_image_uri: str
    create_endpoint: bool
    # Site -> PEM of the CA that issues that site's forwarder certificates; a site missing
    # here gets a CloudFormation parameter to fill at deploy.
    edge_ca_certificate_pems: dict[str, str]
    asset_root: Path
    incoming_expiry_days: int
    intermediate_expiry_days: int
    results_expiry_days: int
    max_azs: int

    @property
    def is_prod(self) -> bool:
        return self.stage == "prod"

    @property
    def removal_policy(self) -> RemovalPolicy:
        # Prod keeps data and keys when the stack goes; dev tears down cleanly.
        return RemovalPolicy.RETAIN if self.is_prod else RemovalPolicy.DESTROY

    @property
    def log_retention(self) -> logs.RetentionDays:
        return logs.RetentionDays.SIX_YEARS if self.is_prod else logs.RetentionDays.THREE_MONTHS

    def log_group(
        self, scope: Construct, construct_id: str, key: kms.IKey, name: str | None = None
    ) -> logs.LogGroup:
        """A log group encrypted under `key`, kept as long as this stage keeps logs."""
        return logs.LogGroup(
            scope,
            construct_id,
            log_group_name=name,
            encryption_key=key,
            retention=self.log_retention,
            removal_policy=self.removal_policy,
        )

    @property
    def dlq_retention(self) -> Duration:
        return Duration.days(14)

    def function_asset(self, function_name: str) -> Path:
        asset = self.asset_root / function_name
        if not (asset / "functions" / function_name / "handler.py").is_file():
            raise FileNotFoundError(
                f"Lambda asset {asset} is missing or has no functions/{function_name}/handler.py;"
                " build it first: python cdk/build_lambda_assets.py (add --no-deps for a quick"
                " synth-only build)"
            )
        return asset


def _text(node: Node, key: str, default: str) -> str:
    value: Any = node.try_get_context(key)
    return default if value is None else str(value)


def _flag(node: Node, key: str, default: bool) -> bool:
    value: Any = node.try_get_context(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


def _sites(node: Node) -> tuple[str, ...]:
    value: Any = node.try_get_context("sites")
    if value is None:
        return ("site-a",)
    items = value if isinstance(value, list) else str(value).split(",")
    sites = tuple(check_site(str(item).strip()) for item in items if str(item).strip())
    if not sites or len(set(sites)) != len(sites):
        raise ValueError("context 'sites' must name at least one site, each once")
    return sites


def _edge_ca_pems(node: Node, sites: tuple[str, ...]) -> dict[str, str]:
    """Each site's own CA: one CA for every site would let one hospital mint another's identity."""
    if node.try_get_context("edge_ca_certificate_file") is not None:
        raise ValueError(
            "context 'edge_ca_certificate_file' (one CA for every site) is gone: a CA shared by"
            " sites lets one hospital issue another site's identity. Give each site its own CA:"
            " -c edge_ca_certificate_files=site-a=a-ca.pem,site-b=b-ca.pem"
        )
    value: Any = node.try_get_context("edge_ca_certificate_files")
    if value is None:
        return {}
    if isinstance(value, dict):
        files = {str(k): str(v) for k, v in value.items()}
    else:
        files = {}
        for item in str(value).split(","):
            site, sep, file = item.partition("=")
            if not sep or not site.strip() or not file.strip():
                raise ValueError("context 'edge_ca_certificate_files' items are site=file.pem")
            files[site.strip()] = file.strip()
    unknown = sorted(set(files) - set(sites))
    if unknown:
        raise ValueError(f"context 'edge_ca_certificate_files' names unknown sites: {unknown}")
    pems = {site: Path(file).read_text() for site, file in files.items()}
    owners: dict[str, str] = {}
    for site, pem in sorted(pems.items()):
        key = "".join(pem.split())
        if key in owners:
            raise ValueError(
                f"sites {owners[key]} and {site} have the same edge CA: each site needs its own,"
                " or either hospital could issue the other's forwarder identity"
            )
        owners[key] = site
    return pems


def _models(node: Node, prod: bool) -> tuple[ModelDeployment, ...]:
    """Context `models`: a list (cdk.json) or its JSON text (`-c models='[...]'`) of objects
    with name, version and optionally artifact, instance_type, min_capacity, max_capacity,
    scale_to_zero and stat. Omitted fields take `gpu_instance_type` / `max_endpoint_instances`.

    `stat`: true (a STAT endpoint on the model's instance type, 1 instance) or an object with
    any of instance_type, min_capacity (>= 1, default 1), max_capacity (default the minimum)."""
    value: Any = node.try_get_context("models")
    items = [DEFAULT_MODEL] if value is None else value
    if isinstance(items, str):
        items = json.loads(items)
    if not isinstance(items, list) or not items:
        raise ValueError("context 'models' must be a non-empty list of models")
    instance_type = _text(node, "gpu_instance_type", "ml.g5.xlarge")
    max_capacity = int(_text(node, "max_endpoint_instances", "4" if prod else "1"))
    models = tuple(_model(item, instance_type, max_capacity) for item in items)
    for attribute in ("name", "slug"):
        names = [getattr(model, attribute) for model in models]
        if len(set(names)) != len(names):
            raise ValueError(f"context 'models': each model needs its own {attribute}")
    return models


def _model(item: Any, instance_type: str, max_capacity: int) -> ModelDeployment:
    if not isinstance(item, dict) or not {"name", "version"} <= set(item):
        raise ValueError("each of context 'models' is an object with a name and a version")
    unknown = sorted(set(item) - _MODEL_KEYS)
    if unknown:
        raise ValueError(f"context 'models' has unknown fields {unknown}")
    name, version = str(item["name"]), str(item["version"])
    if not _MODEL_NAME.match(name) or not _MODEL_VERSION.match(version):
        raise ValueError(f"context 'models': {name!r}@{version!r} is not a model name@version")
    scale_to_zero = bool(item.get("scale_to_zero", True))
    model = ModelDeployment(
        name=name,
        version=version,
        artifact=str(item["artifact"]) if item.get("artifact") else None,
        instance_type=str(item.get("instance_type", instance_type)),
        min_capacity=int(item.get("min_capacity", 0 if scale_to_zero else 1)),
        max_capacity=int(item.get("max_capacity", max_capacity)),
        scale_to_zero=scale_to_zero,
    )
    model = replace(model, stat=_stat_endpoint(name, item.get("stat"), model.instance_type))
    if not 0 <= model.min_capacity <= model.max_capacity or model.max_capacity < 1:
        raise ValueError(
            f"context 'models': {name} needs 0 <= min_capacity <= max_capacity, max >= 1"
        )
    if scale_to_zero != (model.min_capacity == 0):
        raise ValueError(f"context 'models': {name} scales to zero exactly when min_capacity is 0")
    return model


def _stat_endpoint(model_name: str, value: Any, instance_type: str) -> StatEndpoint | None:
    if value is None or value is False:
        return None
    item = {} if value is True else value
    if not isinstance(item, dict) or set(item) - _STAT_KEYS:
        raise ValueError(
            f"context 'models': {model_name}'s stat is true or an object with"
            f" {', '.join(sorted(_STAT_KEYS))}"
        )
    min_capacity = int(item.get("min_capacity", 1))
    stat = StatEndpoint(
        instance_type=str(item.get("instance_type", instance_type)),
        min_capacity=min_capacity,
        max_capacity=int(item.get("max_capacity", max(1, min_capacity))),
    )
    if not 1 <= stat.min_capacity <= stat.max_capacity:
        raise ValueError(
            f"context 'models': {model_name}'s STAT endpoint needs 1 <= min_capacity <="
            " max_capacity (it never scales to zero: a cold start is slower than the queue)"
        )
    return stat


def load_stage_config(node: Node) -> StageConfig:
    stage = _text(node, "stage", "dev")
    if stage not in ("dev", "prod"):
        raise ValueError("context 'stage' must be 'dev' or 'prod'")
    prod = stage == "prod"
    sites = _sites(node)
    for retired in ("model_name", "model_data_url"):
        if node.try_get_context(retired) is not None:
            raise ValueError(
                f"context '{retired}' is gone: list each model in context 'models'"
                " (name, version, artifact, instance_type, min/max_capacity, scale_to_zero)"
            )
    return StageConfig(
        stage=stage,
        sites=sites,
        models=_models(node, prod),
        inference_image_uri=_text(
            node,
            "inference_image_uri",
            # A placeholder account: synth works anywhere; deploy needs the real ECR image.
            "111111111111.dkr.ecr.us-east-1.amazonaws.com/imaging-ai-inference:latest",
        ),
        create_endpoint=_flag(node, "create_endpoint", True),
        edge_ca_certificate_pems=_edge_ca_pems(node, sites),
        asset_root=Path(_text(node, "lambda_asset_root", str(DEFAULT_ASSET_ROOT))),
        incoming_expiry_days=int(_text(node, "incoming_expiry_days", "30" if prod else "7")),
        intermediate_expiry_days=int(_text(node, "intermediate_expiry_days", "7")),
        results_expiry_days=int(_text(node, "results_expiry_days", "90" if prod else "14")),
        max_azs=int(_text(node, "max_azs", "2")),
    )
