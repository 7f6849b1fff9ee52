"""Storage: the customer-managed keys and the encrypted, versioned, logged data bucket."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from imaging_ai_infra.config import StageConfig
from imaging_ai_infra.nag import acknowledge, checkov_skip
from imaging_ai_infra.names import (
    INCOMING_PREFIX,
    INFERENCE_FAILURE_PREFIX,
    INFERENCE_OUTPUT_PREFIX,
    PREPROCESSED_PREFIX,
    RESULTS_PREFIX,
    resource_prefix,
)

_REPLICATION_REASON = (
    "Cross-region replication is a per-deployment disaster-recovery choice (a second region"
    " and key); objects are versioned and de-identified inputs are re-sent by the edge"
    " forwarder's spool. docs/deploy.md lists it under the hospital's responsibilities."
)


class Storage(Construct):
    """The data key, the audit key, the data bucket and the bucket its access logs go to."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        prefix = resource_prefix(config.stage)

        # One key for pipeline data (S3, SQS, SNS, DynamoDB, SageMaker output, envelope
        # encryption) and one for audit data (logs, trail), so log readers never hold the
        # key to the studies.
        def rotated_key(construct_id: str, alias: str, description: str) -> kms.Key:
            return kms.Key(
                self,
                construct_id,
                alias=f"alias/{prefix}-{alias}",
                description=description,
                enable_key_rotation=True,
                removal_policy=config.removal_policy,
                pending_window=Duration.days(30 if config.is_prod else 7),
            )

        self.data_key = rotated_key(
            "DataKey",
            "data",
            "Imaging AI pipeline data: S3, SQS, SNS, DynamoDB, SageMaker, envelopes",
        )
        # EventBridge (manifest events) and SNS (inference notifications) write into queues
        # encrypted with this key; they must be able to use it, for this account only.
        for service in ("events.amazonaws.com", "sns.amazonaws.com"):
            self.data_key.add_to_resource_policy(
                iam.PolicyStatement(
                    sid=f"Allow{service.split('.')[0].capitalize()}ToEncryptQueueMessages",
                    principals=[iam.ServicePrincipal(service)],
                    actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                    resources=["*"],  # in a key policy, "*" means this key
                    conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
                )
            )

        # CloudWatch alarms publish to the encrypted alarm topic (AWS documents this statement
        # without a source condition; alarms can only target topics of this account anyway).
        self.data_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToPublishToEncryptedTopics",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                resources=["*"],
            )
        )

        self.audit_key = rotated_key(
            "AuditKey", "audit", "Imaging AI pipeline audit data: CloudWatch Logs and CloudTrail"
        )
        self.audit_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchLogs",
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=[
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                resources=["*"],
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": (
                            f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:*"
                        )
                    }
                },
            )
        )

        # S3 delivers server access logs only to SSE-S3 buckets, so this one bucket cannot
        # use the CMK; it holds request metadata (keys are pseudonymous), never study data.
        self.access_logs_bucket = s3.Bucket(
            self,
            "AccessLogsBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            removal_policy=config.removal_policy,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=Duration.days(2192 if config.is_prod else 90),
                    noncurrent_version_expiration=Duration.days(30),
                )
            ],
        )
        acknowledge(
            self.access_logs_bucket,
            "S3 delivers server access logs only to buckets with SSE-S3 default encryption, so"
            " this log target cannot use the CMK; it holds request metadata, never study data.",
            "HIPAA.Security-S3DefaultEncryptionKMS",
        )
        checkov_skip(
            self.access_logs_bucket,
            "This is the server-access-log target bucket; logging it into itself would loop.",
            "CKV_AWS_18",
        )
        acknowledge(
            self.access_logs_bucket,
            _REPLICATION_REASON,
            "HIPAA.Security-S3BucketReplicationEnabled",
        )

        day = Duration.days
        # (rule id, prefix, days, days a replaced version stays). De-identified inputs and
        # intermediates are transient: once a run is reported they only cost money and widen
        # the blast radius.
        expiring = (
            ("expire-deidentified-inputs", INCOMING_PREFIX, config.incoming_expiry_days, 1),
            ("expire-preprocessed", PREPROCESSED_PREFIX, config.intermediate_expiry_days, 1),
            (
                "expire-inference-output",
                INFERENCE_OUTPUT_PREFIX,
                config.intermediate_expiry_days,
                1,
            ),
            (
                "expire-inference-failure",
                INFERENCE_FAILURE_PREFIX,
                config.intermediate_expiry_days,
                1,
            ),
            ("expire-delivered-results", RESULTS_PREFIX, config.results_expiry_days, 7),
        )
        self.data_bucket = s3.Bucket(
            self,
            "DataBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.data_key,
            # No bucket key: per-object KMS context (aws:s3:arn) lets the site roles' key
            # policy conditions pin each site to its own prefixes.
            bucket_key_enabled=False,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=self.access_logs_bucket,
            server_access_logs_prefix="data-bucket/",
            removal_policy=config.removal_policy,
            lifecycle_rules=[
                *(
                    s3.LifecycleRule(
                        id=rule_id,
                        prefix=prefix,
                        expiration=day(days),
                        noncurrent_version_expiration=day(noncurrent_days),
                    )
                    for rule_id, prefix, days, noncurrent_days in expiring
                ),
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=day(2),
                ),
            ],
        )
        # EventBridge delivery set on the CloudFormation bucket itself: the L2 flag would add a
        # custom-resource Lambda (with an AWS managed policy) just to flip this switch.
        data_bucket_resource = self.data_bucket.node.default_child
        assert isinstance(data_bucket_resource, s3.CfnBucket)
        data_bucket_resource.add_property_override(
            "NotificationConfiguration.EventBridgeConfiguration.EventBridgeEnabled", True
        )
        acknowledge(
            self.data_bucket, _REPLICATION_REASON, "HIPAA.Security-S3BucketReplicationEnabled"
        )
