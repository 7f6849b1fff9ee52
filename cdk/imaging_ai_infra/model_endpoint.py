"""One model's GPU SageMaker asynchronous endpoint and its scaling (to zero when idle)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from constructs import Construct, IDependable

from imaging_ai_infra.config import ModelDeployment
from imaging_ai_infra.nag import acknowledge
from imaging_ai_infra.names import INFERENCE_FAILURE_PREFIX, INFERENCE_OUTPUT_PREFIX
from imaging_ai_infra.platform import Platform

VARIANT_NAME = "AllTraffic"
# Queued requests per instance the target-tracking policy aims for: one study takes about a
# minute on one GPU, so five queued keeps the wait under ~5 minutes before adding capacity.
BACKLOG_PER_INSTANCE_TARGET = 5.0
_ONE_MINUTE = Duration.minutes(1)


class ModelEndpoint(Construct):
    """Model → EndpointConfig (AsyncInferenceConfig) → Endpoint, scaling between min and max."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
        model: ModelDeployment,
        endpoint_name: str,
        role: iam.IRole,
        role_ready: Sequence[IDependable],
        security_group: ec2.ISecurityGroup,
        topics: tuple[sns.ITopic, sns.ITopic],
    ) -> None:
        super().__init__(scope, construct_id)
        config, network = platform.config, platform.network
        data_bucket, data_key = platform.data_bucket, platform.data_key
        self.endpoint_name = endpoint_name
        success_topic, error_topic = topics
        model_data_url = model.artifact or f"s3://{data_bucket.bucket_name}/{model.artifact_key()}"
        sagemaker_model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=config.inference_image_uri,
                model_data_url=model_data_url,
                environment={"MODEL_NAME": model.name, "MODEL_VERSION": model.version},
            ),
            vpc_config=sagemaker.CfnModel.VpcConfigProperty(
                security_group_ids=[security_group.security_group_id],
                subnets=network.vpc.select_subnets(
                    subnet_type=network.isolated_subnets.subnet_type
                ).subnet_ids,
            ),
            # The container needs no network: SageMaker itself moves inputs and outputs.
            enable_network_isolation=True,
        )
        # SageMaker checks the role's permissions when it creates the model.
        sagemaker_model.node.add_dependency(*role_ready)

        endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "EndpointConfig",
            # GPU families with NVMe instance storage reject a volume key (hardware-encrypted).
            kms_key_id=data_key.key_arn if model.volume_kms_supported else None,
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT_NAME,
                    model_name=sagemaker_model.attr_model_name,
                    instance_type=model.instance_type,
                    initial_instance_count=max(1, model.min_capacity),
                    initial_variant_weight=1.0,
                )
            ],
            async_inference_config=sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty(
                client_config=sagemaker.CfnEndpointConfig.AsyncInferenceClientConfigProperty(
                    max_concurrent_invocations_per_instance=1
                ),
                output_config=sagemaker.CfnEndpointConfig.AsyncInferenceOutputConfigProperty(
                    s3_output_path=f"s3://{data_bucket.bucket_name}/{INFERENCE_OUTPUT_PREFIX}",
                    s3_failure_path=f"s3://{data_bucket.bucket_name}/{INFERENCE_FAILURE_PREFIX}",
                    kms_key_id=data_key.key_arn,
                    notification_config=sagemaker.CfnEndpointConfig.AsyncInferenceNotificationConfigProperty(
                        success_topic=success_topic.topic_arn,
                        error_topic=error_topic.topic_arn,
                    ),
                ),
            ),
        )
        if not model.volume_kms_supported:
            acknowledge(
                endpoint_config,
                f"{model.instance_type} has NVMe instance storage, for which SageMaker"
                " rejects a volume KMS key; instance store is encrypted by the hardware. Async"
                " outputs are still written with the data CMK (OutputConfig.KmsKeyId).",
                "AwsSolutions-SM2",
                "HIPAA.Security-SageMakerEndpointConfigurationKMSKeyConfigured",
            )

        self.endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
        )
        self.scalable_target = appscaling.ScalableTarget(
            self,
            "ScalableTarget",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{endpoint_name}/variant/{VARIANT_NAME}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=model.min_capacity,  # 0: an idle GPU costs nothing
            max_capacity=model.max_capacity,
        )
        self.scalable_target.node.add_dependency(self.endpoint)
        self.scalable_target.scale_to_track_metric(
            "BacklogPerInstance",
            target_value=BACKLOG_PER_INSTANCE_TARGET,
            custom_metric=self.metric("ApproximateBacklogSizePerInstance"),
            scale_in_cooldown=Duration.minutes(10),
            scale_out_cooldown=Duration.minutes(2),
        )
        self.backlog_without_capacity_alarm: cloudwatch.Alarm | None = None
        if model.scale_to_zero:
            self._scale_out_from_zero()

    def _scale_out_from_zero(self) -> None:
        # Target tracking cannot leave zero (backlog per instance is undefined without an
        # instance): a step policy adds the first instance when work waits with no capacity.
        scale_out_from_zero = appscaling.StepScalingAction(
            self,
            "ScaleOutFromZero",
            scaling_target=self.scalable_target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=Duration.minutes(5),
        )
        scale_out_from_zero.add_adjustment(adjustment=1, lower_bound=0)
        self.backlog_without_capacity_alarm = cloudwatch.Alarm(
            self,
            "HasBacklogWithoutCapacity",
            alarm_description=f"Requests wait while endpoint {self.endpoint_name} has zero"
            " instances",
            metric=self.metric("HasBacklogWithoutCapacity", period=Duration.minutes(1)),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.backlog_without_capacity_alarm.add_alarm_action(
            cloudwatch_actions.ApplicationScalingAction(scale_out_from_zero)
        )

    def metric(
        self, name: str, *, period: Duration = _ONE_MINUTE, statistic: str = "Average"
    ) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="AWS/SageMaker",
            metric_name=name,
            dimensions_map={"EndpointName": self.endpoint_name},
            period=period,
            statistic=statistic,
        )
