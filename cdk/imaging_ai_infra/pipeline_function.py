"""A pipeline Lambda: own role, own KMS-encrypted log group, isolated subnets, X-Ray."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from imaging_ai_infra.nag import acknowledge, acknowledge_default_policy, checkov_skip, iam5
from imaging_ai_infra.names import METRICS_NAMESPACE, resource_prefix
from imaging_ai_infra.platform import Platform


class PipelineFunction(Construct):
    """`functions/{name}/handler.lambda_handler` on Python 3.12, wired the same way every time.

    The role starts with only what running in a VPC and logging need; callers add data
    permissions with `grant_*` on the resources the function really touches.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
        name: str,
        description: str,
        environment: dict[str, str],
        timeout: Duration,
        memory_size: int,
        reserved_concurrency: int,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        config, network = platform.config, platform.network
        data_key, audit_key = platform.data_key, platform.audit_key
        function_name = f"{resource_prefix(config.stage)}-{name}"
        self.log_group = config.log_group(
            self, "Logs", audit_key, name=f"/aws/lambda/{function_name}"
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Execution role of the {name} function only",
        )
        self.log_group.grant_write(self.role)
        # Lambda creates and deletes its ENIs through the execution role; the EC2 network
        # interface actions have no resource-level scoping for Describe*, so they take "*".
        eni_policy = iam.ManagedPolicy(
            self,
            "VpcAccess",
            roles=[self.role],
            statements=[
                iam.PolicyStatement(
                    actions=[
                        "ec2:CreateNetworkInterface",
                        "ec2:DescribeNetworkInterfaces",
                        "ec2:DescribeSubnets",
                        "ec2:DeleteNetworkInterface",
                        "ec2:AssignPrivateIpAddresses",
                        "ec2:UnassignPrivateIpAddresses",
                    ],
                    resources=["*"],
                    conditions={"StringEquals": {"aws:RequestedRegion": stack.region}},
                )
            ],
        )
        acknowledge(
            eni_policy,
            "Lambda VPC networking: EC2 network-interface actions do not support resource-level"
            " permissions; the statement is pinned to this region and grants no data access.",
            *iam5(resources=["*"]),
        )
        self.security_group = network.workload_security_group(
            self, "SecurityGroup", f"{name} function: no inbound, HTTPS outbound"
        )
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=function_name,
            description=description,
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.X86_64,  # matches manylinux2014_x86_64 wheels
            handler=f"functions.{name}.handler.lambda_handler",
            code=lambda_.Code.from_asset(str(config.function_asset(name))),
            role=self.role,
            timeout=timeout,
            memory_size=memory_size,
            reserved_concurrent_executions=reserved_concurrency,
            environment={
                **environment,
                "POWERTOOLS_SERVICE_NAME": name,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
            environment_encryption=data_key,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            tracing=lambda_.Tracing.ACTIVE,
            vpc=network.vpc,
            vpc_subnets=network.isolated_subnets,
            security_groups=[self.security_group],
        )
        acknowledge(
            self.function,
            "SQS invokes this function through an event-source mapping (synchronous poll);"
            " a Lambda async DLQ would never receive anything. Failed messages go to the source"
            " queue's redrive DLQ, which the failure function turns into a FAILED state.",
            "HIPAA.Security-LambdaDLQ",
        )
        checkov_skip(
            self.function,
            "SQS invokes this function through an event-source mapping; an async-invocation DLQ"
            " would never receive anything. The source queue's redrive DLQ catches failures.",
            "CKV_AWS_116",
        )
        acknowledge(
            self.function,
            "The Lambda runtime is pinned to Python 3.12, the runtime the functions' contract and"
            " their manylinux wheels target; moving to a newer runtime is a deliberate upgrade.",
            "AwsSolutions-L1",
        )

    def acknowledge_grants(
        self, *, bucket_resources: list[str], actions: tuple[str, ...], extra: str = ""
    ) -> None:
        """Acknowledge exactly the wildcard findings this function's grant_* calls produce;
        call once, after the grants."""
        acknowledge_default_policy(
            self.role,
            "Wildcards are object keys under this function's own S3 prefixes, CDK grant action"
            " families on one named bucket or key, and X-Ray trace actions (no resource-level"
            " permissions exist)" + extra + "; tests/infrastructure asserts that no data action"
            " has a '*' resource.",
            iam5(actions=actions, resources=[*bucket_resources, "*"]),
        )
