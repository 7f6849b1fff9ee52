"""Create, idempotently, every AWS resource the local runtime needs (moto, LocalStack or AWS)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from imaging_ai import state
from imaging_ai.aws import client
from imaging_ai.contracts import (
    INCOMING_PREFIX,
    LOCAL_NAMES,
    MANIFEST_NAME,
    STAT_MANIFEST_NAME,
    site_results_queue_name,
)
from imaging_ai.lambda_stages import LAMBDA_STAGES, LambdaStage, Trigger
from imaging_ai.model_card import ModelCard, store_model_cards

KMS_ALIAS = "alias/imaging-ai-data"
MANIFEST_RULE_NAME = "imaging-ai-manifest-created"
STAT_MANIFEST_RULE_NAME = "imaging-ai-stat-manifest-created"
MAX_RECEIVE_COUNT = 3
QUEUE_VISIBILITY_TIMEOUT_S = 60
# One rule pattern for the local stack and the CDK stack: only a study's commit marker counts.
MANIFEST_KEY_WILDCARD = f"{INCOMING_PREFIX}*/*/{MANIFEST_NAME}"
# A STAT study's commit marker goes to the stage's STAT queue, which it drains first.
STAT_MANIFEST_KEY_WILDCARD = f"{INCOMING_PREFIX}*/*/{STAT_MANIFEST_NAME}"
_BUCKET_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


@dataclass(frozen=True)
class QueuePair:
    """A work queue with its dead-letter queue."""

    url: str
    arn: str
    dlq_url: str
    dlq_arn: str


@dataclass(frozen=True)
class LocalResources:
    """Names, ARNs and URLs of what `provision()` made; enough to run and wire every handler."""

    region: str
    kms_key_arn: str
    kms_alias: str
    data_bucket: str
    state_table: str
    manifest_rule_arn: str
    queues: dict[str, QueuePair]  # Lambda stage name -> its work queue and DLQ
    inference_success_topic_arn: str
    inference_error_topic_arn: str
    # One async endpoint per model: model name -> endpoint name.
    model_endpoints: dict[str, str] = field(default_factory=dict)
    # The second endpoint, for STAT runs, of the models that have one: model name -> its name.
    stat_model_endpoints: dict[str, str] = field(default_factory=dict)
    site_results_queues: dict[str, str] = field(default_factory=dict)  # site -> queue URL
    # Lambda stage name -> the queue STAT studies reach it on (stages with `stat_headroom`)
    stat_queues: dict[str, QueuePair] = field(default_factory=dict)

    @property
    def preprocess(self) -> QueuePair:
        return self.queues["preprocess"]

    @property
    def preprocess_stat(self) -> QueuePair:
        return self.stat_queues["preprocess"]

    @property
    def postprocess(self) -> QueuePair:
        return self.queues["postprocess"]

    def function_environment(self, service_name: str = "imaging-ai") -> dict[str, str]:
        """The environment variables the Lambda functions read (what the CDK stack sets)."""
        return {
            "DATA_BUCKET": self.data_bucket,
            "STATE_TABLE": self.state_table,
            "KMS_KEY_ARN": self.kms_key_arn,
            "MODEL_ENDPOINTS": json.dumps(self.model_endpoints, sort_keys=True),
            "STAT_MODEL_ENDPOINTS": json.dumps(self.stat_model_endpoints, sort_keys=True),
            "SITE_RESULTS_QUEUES": json.dumps(self.site_results_queues, sort_keys=True),
            "POWERTOOLS_SERVICE_NAME": service_name,
            "POWERTOOLS_METRICS_NAMESPACE": "ImagingAI",
        }


def provision(
    sites: Iterable[str],
    model_cards: Sequence[ModelCard] = (),
    max_receive_count: int = MAX_RECEIVE_COUNT,
    stages: Sequence[LambdaStage] = LAMBDA_STAGES,
    stat_endpoint_models: Iterable[str] = (),
) -> LocalResources:
    """Make (or find) every resource; safe to call again with more sites or model cards.

    `stat_endpoint_models`: the models that also get an endpoint for STAT runs only (the
    CDK context's `stat`)."""
    model_endpoints = {card.name: model_endpoint_name(card.name) for card in model_cards}
    stat_model_endpoints = {name: stat_endpoint_name(name) for name in stat_endpoint_models}
    unknown = sorted(set(stat_model_endpoints) - set(model_endpoints))
    every_endpoint = [*model_endpoints.values(), *stat_model_endpoints.values()]
    if unknown or len(set(every_endpoint)) != len(every_endpoint):
        raise ValueError(
            "a STAT endpoint needs a deployed model, and a name no other endpoint has"
            f" (models without a card: {unknown})"
        )
    region = client("sts").meta.region_name
    key_arn = _kms_key()
    bucket = LOCAL_NAMES["data_bucket"]
    _bucket(bucket, key_arn, region)
    queues = {
        stage.name: _queue_pair(stage.queue_name, stage.dlq_name, max_receive_count)
        for stage in stages
        if stage.has_queue
    }
    stat_queues = {
        stage.name: _queue_pair(stage.stat_queue_name, stage.stat_dlq_name, max_receive_count)
        for stage in stages
        if stage.has_stat_queue
    }
    success_arn = _topic(LOCAL_NAMES["inference_success_topic"])
    error_arn = _topic(LOCAL_NAMES["inference_error_topic"])
    rule_arn = ""
    for stage in stages:
        if stage.trigger is Trigger.MANIFEST_CREATED:
            rule_arn = _manifest_rule(
                MANIFEST_RULE_NAME, MANIFEST_KEY_WILDCARD, bucket, queues[stage.name]
            )
        if stage.has_stat_queue:
            _manifest_rule(
                STAT_MANIFEST_RULE_NAME, STAT_MANIFEST_KEY_WILDCARD, bucket, stat_queues[stage.name]
            )
        elif stage.trigger is Trigger.INFERENCE_NOTIFICATIONS:
            for topic_arn in (success_arn, error_arn):
                _subscribe(topic_arn, queues[stage.name])
    table = LOCAL_NAMES["state_table"]
    _state_table(table)
    site_queues = {site: _queue(site_results_queue_name(site))[0] for site in sorted(set(sites))}
    store_model_cards(client("s3"), bucket, model_cards)
    return LocalResources(
        region=region,
        kms_key_arn=key_arn,
        kms_alias=KMS_ALIAS,
        data_bucket=bucket,
        state_table=table,
        manifest_rule_arn=rule_arn,
        queues=queues,
        inference_success_topic_arn=success_arn,
        inference_error_topic_arn=error_arn,
        model_endpoints=model_endpoints,
        stat_model_endpoints=stat_model_endpoints,
        site_results_queues=site_queues,
        stat_queues=stat_queues,
    )


def model_endpoint_name(model_name: str) -> str:
    """The local async endpoint of a model. SageMaker endpoint names are letters, digits and
    hyphens (at most 63): other characters become hyphens, and a hash keeps such names apart."""
    prefix = LOCAL_NAMES["endpoint_prefix"]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model_name).strip("-")
    if slug == model_name and len(prefix) + len(slug) <= 63:
        return prefix + slug
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    return f"{prefix}{slug[: 63 - len(prefix) - 9]}-{digest}"


def stat_endpoint_name(model_name: str) -> str:
    """The local endpoint that serves only STAT runs of a model (the CDK's is named alike)."""
    return model_endpoint_name(f"{model_name}-stat")


def _kms_key() -> str:
    kms = client("kms")
    try:
        metadata = kms.describe_key(KeyId=KMS_ALIAS)["KeyMetadata"]
        return str(metadata["Arn"])
    except ClientError as error:
        if error.response["Error"]["Code"] != "NotFoundException":
            raise
    metadata = kms.create_key(
        Description="imaging-ai data key (study objects and results)",
        KeyUsage="ENCRYPT_DECRYPT",
        KeySpec="SYMMETRIC_DEFAULT",
    )["KeyMetadata"]
    kms.enable_key_rotation(KeyId=metadata["KeyId"])
    kms.create_alias(AliasName=KMS_ALIAS, TargetKeyId=metadata["KeyId"])
    return str(metadata["Arn"])


def _bucket(name: str, key_arn: str, region: str) -> None:
    s3 = client("s3")
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    except ClientError as error:
        if error.response["Error"]["Code"] not in _BUCKET_EXISTS:
            raise
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key_arn,
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_notification_configuration(
        Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )


def _queue(name: str, attributes: dict[str, str] | None = None) -> tuple[str, str]:
    sqs = client("sqs")
    merged = {
        "VisibilityTimeout": str(QUEUE_VISIBILITY_TIMEOUT_S),
        "MessageRetentionPeriod": str(14 * 24 * 3600),
        "SqsManagedSseEnabled": "true",
        **(attributes or {}),
    }
    url = str(sqs.create_queue(QueueName=name, Attributes=merged)["QueueUrl"])
    # create_queue returns the existing queue only when attributes match; set them again.
    sqs.set_queue_attributes(QueueUrl=url, Attributes=merged)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, str(arn)


def _queue_pair(name: str, dlq_name: str, max_receive_count: int) -> QueuePair:
    dlq_url, dlq_arn = _queue(dlq_name)
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
    url, arn = _queue(name, {"RedrivePolicy": redrive})
    return QueuePair(url=url, arn=arn, dlq_url=dlq_url, dlq_arn=dlq_arn)


def _allow_send(queue: QueuePair, principal: str, source_arn: str) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": f"allow-{principal.split('.')[0]}",
                "Effect": "Allow",
                "Principal": {"Service": principal},
                "Action": "sqs:SendMessage",
                "Resource": queue.arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": source_arn}},
            }
        ],
    }
    client("sqs").set_queue_attributes(
        QueueUrl=queue.url, Attributes={"Policy": json.dumps(policy)}
    )


def _manifest_rule(name: str, key_wildcard: str, bucket: str, target: QueuePair) -> str:
    events = client("events")
    pattern: dict[str, Any] = {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {
            "bucket": {"name": [bucket]},
            "object": {"key": [{"wildcard": key_wildcard}]},
        },
    }
    rule_arn = str(
        events.put_rule(Name=name, EventPattern=json.dumps(pattern), State="ENABLED")["RuleArn"]
    )
    events.put_targets(Rule=name, Targets=[{"Id": "preprocess-queue", "Arn": target.arn}])
    _allow_send(target, "events.amazonaws.com", rule_arn)
    return rule_arn


def _topic(name: str) -> str:
    return str(client("sns").create_topic(Name=name)["TopicArn"])


def _subscribe(topic_arn: str, subscriber: QueuePair) -> None:
    sns = client("sns")
    existing = sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])
    if not any(sub.get("Endpoint") == subscriber.arn for sub in existing):
        # Raw delivery off: postprocess reads the SNS envelope, as in AWS.
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=subscriber.arn)


def _state_table(name: str) -> None:
    dynamodb = client("dynamodb")
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=state.KEY_SCHEMA,
            AttributeDefinitions=state.ATTRIBUTE_DEFINITIONS,
            BillingMode="PAY_PER_REQUEST",
            SSESpecification={"Enabled": True},
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise
        return
    dynamodb.get_waiter("table_exists").wait(TableName=name)
