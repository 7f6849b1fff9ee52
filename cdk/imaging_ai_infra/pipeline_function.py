"""A pipeline Lambda: own role, own KMS-encrypted log group, isolated subnets, X-Ray."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.nag import (
    GRANT_KEY_ACTIONS,
    GRANT_PUT_ACTIONS,
    GRANT_READ_ACTIONS,
    acknowledge,
    acknowledge_default_policy,
    bucket_object_resources,
    bucket_prefix_resources,
    checkov_skip,
    iam5,
)
from imaging_ai_infra.names import (
    INCOMING_PREFIX,
    MANIFEST_NAME,
    METRICS_NAMESPACE,
    STAT_MANIFEST_NAME,
    LambdaStageEntry,
    lambda_stage,
    resource_prefix,
)
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import QueueWithDlq

# The commit markers (routine and STAT): the only objects of incoming/ a `reads_manifests`
# stage may read.
MANIFESTS = [f"{INCOMING_PREFIX}*/{name}" for name in (MANIFEST_NAME, STAT_MANIFEST_NAME)]


def stage_timeout(name: str) -> Duration:
    """The function timeout of the Lambda stage `name` (imaging_ai/lambda_stages.toml)."""
    return Duration.seconds(lambda_stage(name)["timeout_s"])


def construct_id(name: str) -> str:
    """The construct id of the stage `name`'s function ("Preprocess"); its queues add "Queue"."""
    return name.title().replace("-", "")


def stage_queues(
    scope: Construct, platform: Platform, name: str, *, stat: bool = False
) -> QueueWithDlq:
    """The work queue (+DLQ) of the stage `name`, or its STAT queue, named as the local runtime
    names them."""
    suffix = "-stat" if stat else ""
    return QueueWithDlq(
        scope,
        f"{construct_id(name)}{'Stat' if stat else ''}Queue",
        config=platform.config,
        key=platform.data_key,
        queue_name=f"{resource_prefix(platform.config.stage)}-{name}{suffix}",
        # Lambda wants a source queue's visibility timeout at six times the function's.
        visibility_timeout=Duration.seconds(stage_timeout(name).to_seconds() * 6),
    )


class PipelineFunction(Construct):
    """The Lambda stage `name` of imaging_ai/lambda_stages.toml on Python 3.12, wired the same
    way every time: `functions/{name}/handler.lambda_handler` with the table's settings.

    The role starts with only what running in a VPC and logging need; `grant_stage_data` adds
    the data permissions the table names; callers add what only they can name.
    """

    def __init__(
        self, scope: Construct, *, platform: Platform, name: str, environment: dict[str, str]
    ) -> None:
        super().__init__(scope, construct_id(name))
        stack = Stack.of(self)
        self.platform = platform
        self.stage: LambdaStageEntry = lambda_stage(name)
        config, network = platform.config, platform.network
        data_key, audit_key = platform.data_key, platform.audit_key
        prod_concurrency, other_concurrency = self.stage["reserved_concurrency"]
        self.reserved_concurrency = prod_concurrency if config.is_prod else other_concurrency
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
            description=self.stage["description"],
            runtime=lambda_.Runtime.PYTHON_3_12,
            architecture=lambda_.Architecture.X86_64,  # matches manylinux2014_x86_64 wheels
            handler=f"functions.{name}.handler.lambda_handler",
            code=lambda_.Code.from_asset(str(config.function_asset(name))),
            role=self.role,
            timeout=stage_timeout(name),
            memory_size=self.stage["memory_mb"],
            reserved_concurrent_executions=self.reserved_concurrency,
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
        if self.stage["trigger"] == "schedule":
            no_function_dlq = (
                "EventBridge invokes this function on a schedule: its rule target has an"
                " encrypted DLQ and a retry policy; a failed pass raises the function-errors"
                " alarm and the next scheduled pass redoes it (it keeps no state of its own)."
            )
        else:
            no_function_dlq = (
                "SQS invokes this function through an event-source mapping (synchronous poll);"
                " a Lambda async DLQ would never receive anything. Failed messages go to the"
                " source queue's redrive DLQ, which the failure function turns into a FAILED"
                " state."
            )
        acknowledge(self.function, no_function_dlq, "HIPAA.Security-LambdaDLQ")
        checkov_skip(self.function, no_function_dlq, "CKV_AWS_116")
        acknowledge(
            self.function,
            "The Lambda runtime is pinned to Python 3.12, the runtime the functions' contract and"
            " their manylinux wheels target; moving to a newer runtime is a deliberate upgrade.",
            "AwsSolutions-L1",
        )

    def grant_stage_data(self, endpoint_names: list[str] | None = None) -> None:
        """What the table says the stage reads and writes in the data bucket and whether it
        invokes the endpoints (`endpoint_names`: one per model), plus the state table: read and
        written with the data key, or (`writes_state = false`) only read, the key only to
        decrypt it."""
        fn, bucket = self.function, self.platform.data_bucket
        for prefix in self.stage.get("reads", []):
            bucket.grant_read(fn, f"{prefix}*")
        for prefix in self.stage.get("writes", []):
            bucket.grant_put(fn, f"{prefix}*")
        if self.stage.get("reads_manifests"):
            fn.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["s3:GetObject"],
                    resources=[bucket.arn_for_objects(pattern) for pattern in MANIFESTS],
                )
            )
        if self._encrypts:
            self.platform.data_key.grant_encrypt_decrypt(fn)
        if self.stage.get("writes_state", True):
            self.platform.state_table.grant_read_write_data(fn)
        else:
            self.platform.state_table.grant_read_data(fn)  # with kms:Decrypt on its key
        if self.stage.get("invokes_endpoint"):
            if not endpoint_names:
                raise ValueError(f"{self.stage['name']} invokes the endpoints: name them")
            fn.add_to_role_policy(
                iam.PolicyStatement(
                    actions=["sagemaker:InvokeEndpointAsync"],
                    resources=[
                        Stack.of(self).format_arn(
                            service="sagemaker", resource="endpoint", resource_name=endpoint_name
                        )
                        for endpoint_name in endpoint_names
                    ],
                )
            )

    @property
    def _encrypts(self) -> bool:
        """Whether the stage uses the data key beyond reading the state table: it touches the
        data bucket's envelopes or writes state."""
        stage = self.stage
        touches_bucket = stage.get("reads") or stage.get("writes") or stage.get("reads_manifests")
        return bool(touches_bucket) or stage.get("writes_state", True)

    def consume(self, *queues: sqs.IQueue, max_concurrency: int | None = None) -> None:
        """Lambda's event source mapping from each queue, in the table's batch size;
        `max_concurrency` caps how many instances the mapping may hold at once."""
        for queue in queues:
            self.function.add_event_source(
                sources.SqsEventSource(
                    queue,
                    batch_size=self.stage["batch_size"],
                    report_batch_item_failures=True,
                    max_concurrency=max_concurrency,
                )
            )

    def acknowledge_grants(self) -> None:
        """Acknowledge exactly the wildcard findings `grant_stage_data` produces; call once,
        after every grant."""
        bucket = self.platform.data_bucket
        reads, writes = self.stage.get("reads", []), self.stage.get("writes", [])
        manifests = MANIFESTS if self.stage.get("reads_manifests") else []
        actions = (
            (GRANT_READ_ACTIONS if reads else ())
            + (GRANT_PUT_ACTIONS if writes else ())
            + (GRANT_KEY_ACTIONS if self._encrypts else ())
        )
        bucket_resources = bucket_prefix_resources(
            bucket, [*reads, *writes]
        ) + bucket_object_resources(bucket, manifests)
        acknowledge_default_policy(
            self.role,
            "Wildcards are object keys under this function's own S3 prefixes, CDK grant action"
            " families on one named bucket or key, and X-Ray trace actions (no resource-level"
            " permissions exist); tests/infrastructure asserts that no data action"
            " has a '*' resource.",
            iam5(actions=actions, resources=[*bucket_resources, "*"]),
        )
