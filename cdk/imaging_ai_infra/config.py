"""Stage configuration read once from CDK context (`-c key=value` or cdk.json)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class StageConfig:
    """Everything that differs between stages; defaults are the dev stage."""

    stage: str
    sites: tuple[str, ...]
    gpu_instance_type: str
    max_endpoint_instances: int
    inference_image_uri: str
    model_name: str
    model_data_url: str | None  # None: `models/{model_name}/model.tar.gz` in the data bucket
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

    @property
    def volume_kms_supported(self) -> bool:
        family = self.gpu_instance_type.split(".")[1] if "." in self.gpu_instance_type else ""
        return family not in _INSTANCE_STORE_FAMILIES

    def model_key(self) -> str:
        return f"{MODELS_PREFIX}{self.model_name}/model.tar.gz"

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


def load_stage_config(node: Node) -> StageConfig:
    stage = _text(node, "stage", "dev")
    if stage not in ("dev", "prod"):
        raise ValueError("context 'stage' must be 'dev' or 'prod'")
    prod = stage == "prod"
    sites = _sites(node)
    model_data_url = node.try_get_context("model_data_url")
    return StageConfig(
        stage=stage,
        sites=sites,
        gpu_instance_type=_text(node, "gpu_instance_type", "ml.g5.xlarge"),
        max_endpoint_instances=int(_text(node, "max_endpoint_instances", "4" if prod else "1")),
        inference_image_uri=_text(
            node,
            "inference_image_uri",
            # A placeholder account: synth works anywhere; deploy needs the real ECR image.
            "111111111111.dkr.ecr.us-east-1.amazonaws.com/imaging-ai-inference:latest",
        ),
        model_name=_text(node, "model_name", "imaging-ai-demo"),
        model_data_url=str(model_data_url) if model_data_url else None,
        create_endpoint=_flag(node, "create_endpoint", True),
        edge_ca_certificate_pems=_edge_ca_pems(node, sites),
        asset_root=Path(_text(node, "lambda_asset_root", str(DEFAULT_ASSET_ROOT))),
        incoming_expiry_days=int(_text(node, "incoming_expiry_days", "30" if prod else "7")),
        intermediate_expiry_days=int(_text(node, "intermediate_expiry_days", "7")),
        results_expiry_days=int(_text(node, "results_expiry_days", "90" if prod else "14")),
        max_azs=int(_text(node, "max_azs", "2")),
    )
