"""Audit and monitoring: CloudTrail with S3 data events, alarms, and the operations dashboard."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.nag import acknowledge
from imaging_ai_infra.names import (
    METRIC_END_TO_END_SECONDS,
    METRIC_STUDIES_FAILED,
    METRIC_STUDIES_RECEIVED,
    METRIC_STUDIES_REPORTED,
    METRICS_NAMESPACE,
    resource_prefix,
)
from imaging_ai_infra.platform import Platform

# Alarm when the end-to-end time of a study exceeds this (p90 over 15 minutes).
END_TO_END_ALARM_SECONDS = 30 * 60
_FIVE_MINUTES = Duration.minutes(5)


class AuditMonitoring(Construct):
    """Who touched which object (CloudTrail), and whether studies flow (alarms, dashboard)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
        access_logs_bucket: s3.IBucket,
        dlqs: dict[str, sqs.IQueue],
        functions: dict[str, lambda_.IFunction],
        timeouts: dict[str, Duration],
        endpoint_names: dict[str, str],
        alarm_email: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        config, data_bucket = platform.config, platform.data_bucket
        data_key, audit_key = platform.data_key, platform.audit_key
        prefix = resource_prefix(config.stage)

        # ---- CloudTrail: management events plus every S3 data event on the data bucket.
        trail_arn = f"arn:{stack.partition}:cloudtrail:{stack.region}:{stack.account}:trail/*"
        audit_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudTrailEncrypt",
                principals=[iam.ServicePrincipal("cloudtrail.amazonaws.com")],
                actions=["kms:GenerateDataKey*", "kms:DescribeKey"],
                resources=["*"],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn": trail_arn},
                },
            )
        )
        self.trail_bucket = s3.Bucket(
            self,
            "TrailBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=audit_key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=access_logs_bucket,
            server_access_logs_prefix="trail-bucket/",
            removal_policy=config.removal_policy,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="retain-audit-six-years",
                    expiration=Duration.days(2192 if config.is_prod else 90),
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.GLACIER,
                            transition_after=Duration.days(90),
                        )
                    ]
                    if config.is_prod
                    else None,
                )
            ],
        )
        acknowledge(
            self.trail_bucket,
            "Cross-region replication of the audit trail is a per-deployment DR choice; the"
            " trail bucket is versioned, KMS-encrypted and log-file validation is on.",
            "HIPAA.Security-S3BucketReplicationEnabled",
        )
        trail_log_group = config.log_group(self, "TrailLogs", audit_key)
        self.trail = cloudtrail.Trail(
            self,
            "Trail",
            trail_name=f"{prefix}-audit",
            bucket=self.trail_bucket,
            encryption_key=audit_key,
            enable_file_validation=True,
            include_global_service_events=True,
            is_multi_region_trail=True,
            send_to_cloud_watch_logs=True,
            cloud_watch_log_group=trail_log_group,
        )
        acknowledge(
            self.trail.node.find_child("LogsRole"),
            "CDK's CloudTrail-to-CloudWatch-Logs role: its inline policy writes to the one trail"
            " log group; it exists for CloudTrail delivery alone.",
            "HIPAA.Security-IAMNoInlinePolicy",
        )
        self.trail.add_s3_event_selector(
            [cloudtrail.S3EventSelector(bucket=data_bucket)],
            read_write_type=cloudtrail.ReadWriteType.ALL,
            include_management_events=True,
        )

        # ---- Alarms, all to one encrypted topic operations subscribe to.
        self.alarm_topic = sns.Topic(
            self, "AlarmTopic", topic_name=f"{prefix}-alarms", master_key=data_key, enforce_ssl=True
        )
        if alarm_email:
            self.alarm_topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        alarm_action = cloudwatch_actions.SnsAction(self.alarm_topic)
        at_least = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
        self.alarms: list[cloudwatch.Alarm] = []

        def alarm(
            construct_id: str,
            description: str,
            metric: cloudwatch.IMetric,
            threshold: float = 1,
            evaluation_periods: int = 1,
            comparison_operator: cloudwatch.ComparisonOperator = at_least,
        ) -> cloudwatch.Alarm:
            """An alarm to the topic; by default it fires on the first occurrence."""
            created = cloudwatch.Alarm(
                self,
                construct_id,
                alarm_description=description,
                metric=metric,
                threshold=threshold,
                evaluation_periods=evaluation_periods,
                comparison_operator=comparison_operator,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
            created.add_alarm_action(alarm_action)
            self.alarms.append(created)
            return created

        for name, dlq in dlqs.items():
            alarm(
                f"DlqDepth-{name}",
                f"Messages are dead-lettered in {name}: a study may be stuck",
                metric=dlq.metric_approximate_number_of_messages_visible(
                    period=Duration.minutes(5), statistic="Maximum"
                ),
            )
        for name, fn in functions.items():
            alarm(
                f"FunctionErrors-{name}",
                f"The {name} function raised errors",
                metric=fn.metric_errors(period=Duration.minutes(5)),
            )
        failures = {
            f"f{index}": self.pipeline_metric(service, name, "Sum")
            for index, (service, name) in enumerate(METRIC_STUDIES_FAILED)
        }
        alarm(
            "StudiesFailed",
            "At least one study ended FAILED (refused, failed in postprocess or dead-lettered)",
            metric=cloudwatch.MathExpression(
                expression=" + ".join(f"FILL({key}, 0)" for key in failures),
                using_metrics=failures,
                label="Failed studies",
                period=Duration.minutes(5),
            ),
        )
        for name, fn in functions.items():
            alarm(
                f"StageLatency-{name}",
                f"p90 duration of the {name} function above 80% of its timeout",
                metric=fn.metric_duration(period=Duration.minutes(15), statistic="p90"),
                threshold=0.8 * timeouts[name].to_milliseconds(),
                evaluation_periods=2,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            )
        service, metric_name = METRIC_END_TO_END_SECONDS
        alarm(
            "EndToEndLatency",
            f"p90 time from manifest to site message above {END_TO_END_ALARM_SECONDS} s",
            metric=self.pipeline_metric(service, metric_name, "p90", Duration.minutes(15)),
            threshold=END_TO_END_ALARM_SECONDS,
            evaluation_periods=2,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )
        # One endpoint per model (model name -> endpoint name): each alarms on its own.
        for model_name, endpoint_name in endpoint_names.items():
            alarm(
                f"InferenceBacklogAge-{endpoint_name}",
                f"Requests wait in model {model_name}'s endpoint queue for more than 15 minutes",
                metric=cloudwatch.Metric(
                    namespace="AWS/SageMaker",
                    metric_name="TimeInBacklog",
                    dimensions_map={"EndpointName": endpoint_name},
                    period=Duration.minutes(5),
                    statistic="Maximum",
                ),
                threshold=15 * 60 * 1000,  # milliseconds
                evaluation_periods=3,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            )

        # ---- Dashboard: throughput and latency per stage.
        def sagemaker(
            metric_name: str, statistic: str, period: Duration
        ) -> list[cloudwatch.Metric]:
            return [
                cloudwatch.Metric(
                    namespace="AWS/SageMaker",
                    metric_name=metric_name,
                    dimensions_map={"EndpointName": endpoint_name},
                    statistic=statistic,
                    period=period,
                    label=f"{model_name} {metric_name} ({statistic})",
                )
                for model_name, endpoint_name in endpoint_names.items()
            ]

        hour = Duration.hours(1)
        quarter = Duration.minutes(15)
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{prefix}-pipeline",
            default_interval=Duration.days(1),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Studies per hour",
                left=[
                    self.pipeline_metric(*METRIC_STUDIES_RECEIVED, "Sum", hour),
                    self.pipeline_metric(*METRIC_STUDIES_REPORTED, "Sum", hour),
                    *(self.pipeline_metric(s, n, "Sum", hour) for s, n in METRIC_STUDIES_FAILED),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Latency per stage, p90 (ms)",
                left=[
                    *(
                        fn.metric_duration(period=quarter, statistic="p90", label=f"{name} (p90)")
                        for name, fn in functions.items()
                    ),
                    *sagemaker("TimeInBacklog", "p90", quarter),
                    *sagemaker("TotalProcessingTime", "p90", quarter),
                ],
                right=[self.pipeline_metric(*METRIC_END_TO_END_SECONDS, "p90", quarter)],
                right_y_axis=cloudwatch.YAxisProps(label="end-to-end seconds"),
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Endpoint backlog and capacity",
                left=[
                    *sagemaker("ApproximateBacklogSize", "Average", Duration.minutes(5)),
                    *sagemaker("ApproximateBacklogSizePerInstance", "Average", Duration.minutes(5)),
                    *sagemaker("HasBacklogWithoutCapacity", "Maximum", Duration.minutes(5)),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Dead-letter queue depth",
                left=[
                    dlq.metric_approximate_number_of_messages_visible(
                        period=Duration.minutes(5), statistic="Maximum", label=name
                    )
                    for name, dlq in dlqs.items()
                ],
                width=12,
            ),
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=24),
        )

    @staticmethod
    def pipeline_metric(
        service: str, name: str, statistic: str, period: Duration = _FIVE_MINUTES
    ) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=name,
            dimensions_map={"service": service},
            statistic=statistic,
            period=period,
            label=f"{name} ({statistic})",
        )
