"""Package a model directory as model.tar.gz and create or update the SageMaker async endpoint.

Run: python -m containers.inference.deploy --dry-run --out dist/model.tar.gz
     python -m containers.inference.deploy --image-uri URI --role-arn ARN --bucket B \
         --success-topic-arn ARN --error-topic-arn ARN --kms-key-arn ARN
The SDK calls need the `deploy` extra (`pip install -e '.[deploy]'`, sagemaker v3); `--dry-run`
only packages and checks, so it runs without the SDK and without AWS credentials.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging_ai.contracts import (
    INFERENCE_FAILURE_PREFIX,
    INFERENCE_OUTPUT_PREFIX,
    LOCAL_NAMES,
    MODELS_PREFIX,
)
from imaging_ai.errors import ContractError
from imaging_ai.inference.bundle import is_bundle, is_model_dir, model_versions, read_model_card
from imaging_ai.logs import configure_json_logging, get_logger
from imaging_ai.model_card import MODEL_CARD_NAME, ModelCard, store_model_cards
from imaging_ai.model_registry import DEMO_MODEL_DIR

logger = get_logger(__name__)

DEFAULT_MODEL_DIR = DEMO_MODEL_DIR


@dataclass(frozen=True)
class EndpointPlan:
    """Everything the endpoint needs, decided before any AWS call."""

    endpoint_name: str
    model_s3_uri: str
    image_uri: str
    role_arn: str
    instance_type: str
    output_s3_uri: str
    failure_s3_uri: str
    success_topic_arn: str
    error_topic_arn: str
    kms_key_arn: str | None
    max_concurrent_invocations: int = 1


def package_model(model_dir: Path, out_path: Path) -> list[ModelCard]:
    """model.tar.gz as SageMaker unpacks it into /opt/ml/model; the cards in it, oldest first.

    A model directory (model.json and weights, or a whole MONAI bundle) goes at the root; a
    model's registry folder goes version folder by version folder, so the endpoint keeps
    every version (a re-run pins one). Refuses a directory that does not meet the model
    contract (weights that do not match model.json, a bundle that cannot be mapped).
    """
    versions = model_versions(model_dir)
    if not versions:
        raise ContractError("neither a model directory nor a model's registry folder")
    single = is_model_dir(model_dir)
    cards = []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out_path, "w:gz") as archive:
        for version, version_dir in versions.items():
            card = read_model_card(version_dir)
            if card.version != version:
                raise ContractError(f"folder {version!r} holds version {card.version!r}")
            prefix = Path() if single else Path(version)
            names = (
                [path.relative_to(version_dir) for path in sorted(version_dir.rglob("*"))]
                if is_bundle(version_dir)
                else [Path(MODEL_CARD_NAME), Path(card.weights_file)]
            )
            for name in names:
                if (version_dir / name).is_file():
                    archive.add(version_dir / name, arcname=str(prefix / name))
            cards.append(card)
    return cards


def upload_cards(cards: list[ModelCard], bucket: str) -> None:
    """Every version's card stays at models/NAME/VERSION/model.json (the Lambdas read the one
    a run pins); the newest is also the current models/NAME/model.json."""
    import boto3

    store_model_cards(boto3.client("s3"), bucket, cards, ServerSideEncryption="aws:kms")


def resource_name(card: ModelCard) -> str:
    """Model and endpoint-config names are immutable in SageMaker: version + time in the name."""
    version = card.version.replace(".", "-")
    return f"{card.name}-{version}-{time.strftime('%Y%m%d%H%M%S')}"[:63]


def upload(archive: Path, bucket: str, key: str) -> str:
    import boto3

    boto3.client("s3").upload_file(
        str(archive), bucket, key, ExtraArgs={"ServerSideEncryption": "aws:kms"}
    )
    return f"s3://{bucket}/{key}"


def deploy(plan: EndpointPlan, card: ModelCard) -> str:
    """Create the SageMaker model and endpoint config, then create or update the endpoint."""
    # Imported here: the sagemaker SDK (~95 packages) is only in the optional `deploy` extra.
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model
    from sagemaker.core.shapes import (
        AsyncInferenceClientConfig,
        AsyncInferenceConfig,
        AsyncInferenceNotificationConfig,
        AsyncInferenceOutputConfig,
        ContainerDefinition,
        ProductionVariant,
    )

    name = resource_name(card)
    Model.create(
        model_name=name,
        primary_container=ContainerDefinition(
            image=plan.image_uri,
            model_data_url=plan.model_s3_uri,
            environment={"INFERENCE_AMP": "1", "INFERENCE_SW_BATCH_SIZE": "4"},
        ),
        execution_role_arn=plan.role_arn,
    )
    EndpointConfig.create(
        endpoint_config_name=name,
        production_variants=[
            ProductionVariant(
                variant_name="AllTraffic",
                model_name=name,
                instance_type=plan.instance_type,
                initial_instance_count=1,
            )
        ],
        async_inference_config=AsyncInferenceConfig(
            output_config=AsyncInferenceOutputConfig(
                s3_output_path=plan.output_s3_uri,
                s3_failure_path=plan.failure_s3_uri,
                kms_key_id=plan.kms_key_arn,
                notification_config=AsyncInferenceNotificationConfig(
                    success_topic=plan.success_topic_arn,
                    error_topic=plan.error_topic_arn,
                ),
            ),
            # One study at a time per GPU: the predictor serialises inference anyway.
            client_config=AsyncInferenceClientConfig(
                max_concurrent_invocations_per_instance=plan.max_concurrent_invocations
            ),
        ),
        kms_key_id=plan.kms_key_arn,
    )
    existing: Any = None
    try:
        existing = Endpoint.get(endpoint_name=plan.endpoint_name)
    except Exception as error:  # the SDK raises a botocore ClientError subclass when absent
        if "Could not find" not in str(error) and "ValidationException" not in str(error):
            raise
    if existing is None:
        endpoint = Endpoint.create(endpoint_name=plan.endpoint_name, endpoint_config_name=name)
        action = "created"
    else:
        existing.update(endpoint_config_name=name)
        endpoint, action = existing, "updated"
    endpoint.wait_for_status(target_status="InService")
    logger.info("endpoint_ready", endpoint=plan.endpoint_name, action=action, config=name)
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--out", type=Path, default=Path("dist/model.tar.gz"))
    parser.add_argument("--dry-run", action="store_true", help="package and check only")
    parser.add_argument("--endpoint-name", default=LOCAL_NAMES["endpoint_name"])
    parser.add_argument("--image-uri")
    parser.add_argument("--role-arn")
    parser.add_argument("--bucket", help="data bucket: models/, inference-output/ live there")
    parser.add_argument("--instance-type", default="ml.g5.xlarge")
    parser.add_argument("--success-topic-arn")
    parser.add_argument("--error-topic-arn")
    parser.add_argument("--kms-key-arn")
    args = parser.parse_args(argv)
    configure_json_logging()
    cards = package_model(args.model_dir, args.out)
    card = cards[-1]  # the newest: the endpoint's default version
    summary = {
        "archive": str(args.out),
        "bytes": args.out.stat().st_size,
        "model": card.name,
        "version": card.version,
        "weights_sha256": card.weights_sha256,
        "versions": [kept.version for kept in cards],
    }
    if args.dry_run:
        print(json.dumps({**summary, "dry_run": True}))
        return
    required = ("image_uri", "role_arn", "bucket", "success_topic_arn", "error_topic_arn")
    missing = [f"--{name.replace('_', '-')}" for name in required if not getattr(args, name)]
    if missing:
        parser.error(f"missing for a real deployment: {' '.join(missing)}")
    key = f"{MODELS_PREFIX}{card.name}/{card.version}/model.tar.gz"
    plan = EndpointPlan(
        endpoint_name=args.endpoint_name,
        model_s3_uri=upload(args.out, args.bucket, key),
        image_uri=args.image_uri,
        role_arn=args.role_arn,
        instance_type=args.instance_type,
        output_s3_uri=f"s3://{args.bucket}/{INFERENCE_OUTPUT_PREFIX}",
        # The prefix the stack's IAM grants cover (was "inference-failures/": denied).
        failure_s3_uri=f"s3://{args.bucket}/{INFERENCE_FAILURE_PREFIX}",
        success_topic_arn=args.success_topic_arn,
        error_topic_arn=args.error_topic_arn,
        kms_key_arn=args.kms_key_arn,
    )
    upload_cards(cards, args.bucket)
    config = deploy(plan, card)
    print(json.dumps({**summary, "endpoint": plan.endpoint_name, "endpoint_config": config}))


if __name__ == "__main__":
    main()
