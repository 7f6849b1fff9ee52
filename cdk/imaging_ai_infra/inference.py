"""Inference: the GPU SageMaker asynchronous endpoint, its notifications and its scaling."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from constructs import Construct

from imaging_ai_infra.config import StageConfig
from imaging_ai_infra.nag import (
    GRANT_KEY_ACTIONS,
    GRANT_PUT_ACTIONS,
    GRANT_READ_ACTIONS,
    acknowledge,
    acknowledge_default_policy,
    bucket_prefix_resources,
    iam5,
)
from imaging_ai_infra.names import (
    INFERENCE_FAILURE_PREFIX,
    INFERENCE_OUTPUT_PREFIX,
    MODELS_PREFIX,
    PREPROCESSED_PREFIX,
    resource_prefix,
)
from imaging_ai_infra.platform import Platform

VARIANT_NAME = "AllTraffic"
# Queued requests per instance the target-tracking policy aims for: one study takes about a
# minute on one GPU, so five queued keeps the wait under ~5 minutes before adding capacity.
BACKLOG_PER_INSTANCE_TARGET = 5.0
_ONE_MINUTE = Duration.minutes(1)


def endpoint_name_for(config: StageConfig) -> str:
    return f"{resource_prefix(config.stage)}-segmentation"


class Inference(Construct):
    """Model → EndpointConfig (AsyncInferenceConfig) → Endpoint, scaling between 0 and N."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
    ) -> None:
        super().__init__(scope, construct_id)
        config, network = platform.config, platform.network
        data_bucket, data_key = platform.data_bucket, platform.data_key
        stack = Stack.of(self)
        self.endpoint_name = endpoint_name_for(config)
        prefix = resource_prefix(config.stage)

        self.success_topic, self.error_topic = (
            sns.Topic(
                self,
                f"{outcome.title()}Topic",
                topic_name=f"{prefix}-inference-{outcome}",
                master_key=data_key,
                enforce_ssl=True,
            )
            for outcome in ("success", "error")
        )

        self.role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="SageMaker async endpoint: reads inputs and model, writes outputs",
        )
        model_data_url = config.model_data_url or (
            f"s3://{data_bucket.bucket_name}/{config.model_key()}"
        )
        data_bucket.grant_read(self.role, f"{MODELS_PREFIX}*")
        data_bucket.grant_read(self.role, f"{PREPROCESSED_PREFIX}*")
        data_bucket.grant_put(self.role, f"{INFERENCE_OUTPUT_PREFIX}*")
        data_bucket.grant_put(self.role, f"{INFERENCE_FAILURE_PREFIX}*")
        data_key.grant_encrypt_decrypt(self.role)
        self.success_topic.grant_publish(self.role)
        self.error_topic.grant_publish(self.role)
        repository_arn, _, _ = self._image_repository_arn(config.inference_image_uri)
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                resources=[repository_arn],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="/aws/sagemaker/Endpoints/" + self.endpoint_name + ":*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        # Statements SageMaker needs that cannot name a resource (ECR auth token, ENIs in the
        # VPC, CloudWatch metrics pinned to its namespace).
        platform_policy = iam.ManagedPolicy(
            self,
            "PlatformAccess",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]),
                iam.PolicyStatement(
                    actions=["cloudwatch:PutMetricData"],
                    resources=["*"],
                    conditions={
                        "StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/Endpoints"}
                    },
                ),
                iam.PolicyStatement(
                    actions=[
                        "ec2:CreateNetworkInterface",
                        "ec2:CreateNetworkInterfacePermission",
                        "ec2:DeleteNetworkInterface",
                        "ec2:DeleteNetworkInterfacePermission",
                        "ec2:DescribeNetworkInterfaces",
                        "ec2:DescribeVpcs",
                        "ec2:DescribeDhcpOptions",
                        "ec2:DescribeSubnets",
                        "ec2:DescribeSecurityGroups",
                    ],
                    resources=["*"],
                    conditions={"StringEquals": {"aws:RequestedRegion": stack.region}},
                ),
            ],
        )
        acknowledge(
            platform_policy,
            "ecr:GetAuthorizationToken, EC2 network-interface management for VpcConfig and"
            " cloudwatch:PutMetricData have no resource-level permissions; metrics are pinned to"
            " the SageMaker namespace and EC2 actions to this region; no data action is here.",
            *iam5(resources=["*"]),
        )
        log_group_arn = "arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:"
        acknowledge_default_policy(
            self.role,
            "Wildcards are object keys under the models/, preprocessed/, inference-output/ and"
            " inference-failure/ prefixes of the one data bucket, CDK grant action families on"
            " one named bucket or key, and log streams of this endpoint's own log group.",
            iam5(
                actions=GRANT_READ_ACTIONS + GRANT_PUT_ACTIONS + GRANT_KEY_ACTIONS,
                resources=[
                    *bucket_prefix_resources(
                        data_bucket,
                        [
                            MODELS_PREFIX,
                            PREPROCESSED_PREFIX,
                            INFERENCE_OUTPUT_PREFIX,
                            INFERENCE_FAILURE_PREFIX,
                        ],
                    ),
                    f"{log_group_arn}/aws/sagemaker/Endpoints/{self.endpoint_name}:*",
                ],
            ),
        )

        self.security_group = network.workload_security_group(
            self, "SecurityGroup", "SageMaker endpoint: no inbound, HTTPS outbound"
        )
        self.endpoint: sagemaker.CfnEndpoint | None = None
        self.scalable_target: appscaling.ScalableTarget | None = None
        if not config.create_endpoint:
            return

        model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=config.inference_image_uri,
                model_data_url=model_data_url,
                environment={"MODEL_NAME": config.model_name},
            ),
            vpc_config=sagemaker.CfnModel.VpcConfigProperty(
                security_group_ids=[self.security_group.security_group_id],
                subnets=network.vpc.select_subnets(
                    subnet_type=network.isolated_subnets.subnet_type
                ).subnet_ids,
            ),
            # The container needs no network: SageMaker itself moves inputs and outputs.
            enable_network_isolation=True,
        )
        # SageMaker checks the role's permissions when it creates the model.
        model.node.add_dependency(self.role.node.find_child("DefaultPolicy"), platform_policy)

        endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "EndpointConfig",
            # GPU families with NVMe instance storage reject a volume key (hardware-encrypted).
            kms_key_id=data_key.key_arn if config.volume_kms_supported else None,
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT_NAME,
                    model_name=model.attr_model_name,
                    instance_type=config.gpu_instance_type,
                    initial_instance_count=1,
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
                        success_topic=self.success_topic.topic_arn,
                        error_topic=self.error_topic.topic_arn,
                    ),
                ),
            ),
        )
        if not config.volume_kms_supported:
            acknowledge(
                endpoint_config,
                f"{config.gpu_instance_type} has NVMe instance storage, for which SageMaker"
                " rejects a volume KMS key; instance store is encrypted by the hardware. Async"
                " outputs are still written with the data CMK (OutputConfig.KmsKeyId).",
                "AwsSolutions-SM2",
                "HIPAA.Security-SageMakerEndpointConfigurationKMSKeyConfigured",
            )

        self.endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
        )

        self.scalable_target = appscaling.ScalableTarget(
            self,
            "ScalableTarget",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{self.endpoint_name}/variant/{VARIANT_NAME}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=0,  # scale to zero: an idle GPU costs nothing
            max_capacity=config.max_endpoint_instances,
        )
        self.scalable_target.node.add_dependency(self.endpoint)
        self.scalable_target.scale_to_track_metric(
            "BacklogPerInstance",
            target_value=BACKLOG_PER_INSTANCE_TARGET,
            custom_metric=self.endpoint_metric("ApproximateBacklogSizePerInstance"),
            scale_in_cooldown=Duration.minutes(10),
            scale_out_cooldown=Duration.minutes(2),
        )
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
            alarm_description="Requests wait while the endpoint has zero instances",
            metric=self.endpoint_metric("HasBacklogWithoutCapacity", period=Duration.minutes(1)),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.backlog_without_capacity_alarm.add_alarm_action(
            cloudwatch_actions.ApplicationScalingAction(scale_out_from_zero)
        )

    def endpoint_metric(
        self, name: str, *, period: Duration = _ONE_MINUTE, statistic: str = "Average"
    ) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="AWS/SageMaker",
            metric_name=name,
            dimensions_map={"EndpointName": self.endpoint_name},
            period=period,
            statistic=statistic,
        )

    @staticmethod
    def _image_repository_arn(image_uri: str) -> tuple[str, str, str]:
        """`{account}.dkr.ecr.{region}.amazonaws.com/{repo}:{tag}` → (repository ARN, account,
        region); a non-ECR image gets no ECR grant it could not use anyway."""
        registry, _, repository = image_uri.partition("/")
        repository = repository.split("@")[0].split(":")[0]
        parts = registry.split(".")
        if len(parts) < 4 or parts[1] != "dkr" or parts[2] != "ecr":
            raise ValueError("inference_image_uri must be an ECR image URI")
        account, region = parts[0], parts[3]
        return f"arn:aws:ecr:{region}:{account}:repository/{repository}", account, region
