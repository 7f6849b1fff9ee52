"""Inference: one GPU SageMaker asynchronous endpoint per model (and a STAT one where the
model asks for it), their notifications."""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from constructs import Construct

from imaging_ai_infra.config import ModelDeployment, StageConfig
from imaging_ai_infra.model_endpoint import ModelEndpoint
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

STAT_ENDPOINT_SUFFIX = "-stat"


def endpoint_name_for(config: StageConfig, model: ModelDeployment, *, stat: bool = False) -> str:
    """The model's endpoint: one per model, named after it (SageMaker allows 63 characters);
    `stat`: its STAT endpoint's."""
    name = f"{resource_prefix(config.stage)}-{model.slug}{STAT_ENDPOINT_SUFFIX if stat else ''}"
    if len(name) > 63:
        raise ValueError(f"endpoint name {name!r} is over 63 characters: shorten the model name")
    return name


class Inference(Construct):
    """One asynchronous endpoint per model (`ModelEndpoint`), and a second one for STAT runs
    of a model with `stat` in its context, sharing the notification topics (so postprocess
    and the failure path see both alike), the execution role and the security group."""

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
        # Model name -> its endpoint's name: what preprocessing invokes (MODEL_ENDPOINTS).
        self.model_endpoints = {m.name: endpoint_name_for(config, m) for m in config.models}
        # Model name -> its STAT endpoint's name, for the models that have one
        # (STAT_MODEL_ENDPOINTS): preprocess sends a STAT run there.
        self.stat_model_endpoints = {
            m.name: endpoint_name_for(config, m, stat=True) for m in config.models if m.stat
        }
        every_endpoint = [*self.model_endpoints.values(), *self.stat_model_endpoints.values()]
        if len(set(every_endpoint)) != len(every_endpoint):
            raise ValueError(
                "context 'models': two endpoints would have the same name (a model named like"
                f" another's STAT endpoint, '{STAT_ENDPOINT_SUFFIX}'): rename one"
            )
        # What each endpoint serves -> its name, for alarms and dashboards.
        self.labelled_endpoints = {
            **self.model_endpoints,
            **{f"{model} STAT": name for model, name in self.stat_model_endpoints.items()},
        }
        log_streams = [f"/aws/sagemaker/Endpoints/{name}:*" for name in every_endpoint]
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
                        resource_name=log_stream,
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                    for log_stream in log_streams
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
            " one named bucket or key, and log streams of the endpoints' own log groups.",
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
                    *(f"{log_group_arn}{log_stream}" for log_stream in log_streams),
                ],
            ),
        )

        self.security_group = network.workload_security_group(
            self, "SecurityGroup", "SageMaker endpoint: no inbound, HTTPS outbound"
        )
        self.endpoints: dict[str, ModelEndpoint] = {}
        self.stat_endpoints: dict[str, ModelEndpoint] = {}
        if not config.create_endpoint:
            return
        role_ready = [self.role.node.find_child("DefaultPolicy"), platform_policy]

        def endpoint(construct_id: str, model: ModelDeployment, name: str) -> ModelEndpoint:
            return ModelEndpoint(
                self,
                construct_id,
                platform=platform,
                model=model,
                endpoint_name=name,
                role=self.role,
                role_ready=role_ready,
                security_group=self.security_group,
                topics=(self.success_topic, self.error_topic),
            )

        for model in config.models:
            self.endpoints[model.name] = endpoint(
                f"Endpoint-{model.slug}", model, self.model_endpoints[model.name]
            )
            if (stat_model := model.stat_deployment()) is not None:
                self.stat_endpoints[model.name] = endpoint(
                    f"StatEndpoint-{model.slug}",
                    stat_model,
                    self.stat_model_endpoints[model.name],
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
