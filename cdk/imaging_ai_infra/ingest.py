"""Ingest: manifest objects → EventBridge rules → SQS (+DLQ), routine and STAT → preprocess.

Priority: a STAT study's manifest key ends in STAT_MANIFEST_NAME (the S3 event carries only
the key), so its own rule sends it to its own queue. The preprocess function drains both, and
the routine queue's event source is capped below the function's reserved concurrency: a
routine backlog can never take the instances a STAT study needs (docs/priority.md).
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.nag import (
    GRANT_KEY_ACTIONS,
    GRANT_PUT_ACTIONS,
    GRANT_READ_ACTIONS,
    bucket_prefix_resources,
)
from imaging_ai_infra.names import (
    INCOMING_PREFIX,
    MANIFEST_NAME,
    MODELS_PREFIX,
    PREPROCESSED_PREFIX,
    STAT_MANIFEST_NAME,
    resource_prefix,
)
from imaging_ai_infra.pipeline_function import PipelineFunction
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import QueueWithDlq

PREPROCESS_TIMEOUT = Duration.minutes(5)
# Preprocess instances at once, and how many of them routine studies may hold: the rest are
# kept for STAT studies (an SQS event source's maximum concurrency is at least 2).
PREPROCESS_CONCURRENCY = {"prod": 10, "dev": 4}
STAT_HEADROOM = 2


class Ingest(Construct):
    """Only the manifest, written last by the forwarder, starts a run."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
        endpoint_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        config, data_bucket, data_key = platform.config, platform.data_bucket, platform.data_key
        prefix = resource_prefix(config.stage)
        self.queues = QueueWithDlq(
            self,
            "PreprocessQueue",
            config=config,
            key=data_key,
            queue_name=f"{prefix}-preprocess",
            visibility_timeout=Duration.seconds(PREPROCESS_TIMEOUT.to_seconds() * 6),
        )
        self.stat_queues = QueueWithDlq(
            self,
            "PreprocessStatQueue",
            config=config,
            key=data_key,
            queue_name=f"{prefix}-preprocess-stat",
            visibility_timeout=Duration.seconds(PREPROCESS_TIMEOUT.to_seconds() * 6),
        )
        self.manifest_rule = self._manifest_rule(
            "ManifestCreated", MANIFEST_NAME, self.queues, data_bucket.bucket_name
        )
        self.stat_manifest_rule = self._manifest_rule(
            "StatManifestCreated", STAT_MANIFEST_NAME, self.stat_queues, data_bucket.bucket_name
        )

        concurrency = PREPROCESS_CONCURRENCY["prod" if config.is_prod else "dev"]
        self.preprocess = PipelineFunction(
            self,
            "Preprocess",
            name="preprocess",
            description="Decrypts a study, builds the model-ready volume, invokes the endpoint",
            platform=platform,
            environment=platform.function_environment(ENDPOINT_NAME=endpoint_name),
            timeout=PREPROCESS_TIMEOUT,
            # Measured (benchmarks/pipeline.py, two runs): peak RSS 0.46-0.51 / 1.0 / 1.9 GiB for
            # 200 / 500 / 1,000 slices of 512² (~260 MiB + 1.7 MiB a slice, the float32 volume
            # dominating).
            # 4096 MB holds a 2,000-slice series (~3.6 GiB) with ~12 % to spare, well inside
            # Lambda's 10,240 MB, and buys 2.3 vCPUs (Lambda allots CPU by memory).
            memory_size=4096,
            reserved_concurrency=concurrency,
        )
        fn = self.preprocess.function
        data_bucket.grant_read(fn, f"{INCOMING_PREFIX}*")
        data_bucket.grant_read(fn, f"{MODELS_PREFIX}*")
        data_bucket.grant_put(fn, f"{PREPROCESSED_PREFIX}*")
        data_key.grant_encrypt_decrypt(fn)
        platform.state_table.grant_read_write_data(fn)
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:InvokeEndpointAsync"],
                resources=[
                    Stack.of(self).format_arn(
                        service="sagemaker", resource="endpoint", resource_name=endpoint_name
                    )
                ],
            )
        )
        fn.add_event_source(
            sources.SqsEventSource(
                self.queues.queue,
                batch_size=1,
                report_batch_item_failures=True,
                max_concurrency=concurrency - STAT_HEADROOM,
            )
        )
        fn.add_event_source(
            sources.SqsEventSource(
                self.stat_queues.queue, batch_size=1, report_batch_item_failures=True
            )
        )
        self.preprocess.acknowledge_grants(
            bucket_resources=bucket_prefix_resources(
                data_bucket, [INCOMING_PREFIX, MODELS_PREFIX, PREPROCESSED_PREFIX]
            ),
            actions=GRANT_READ_ACTIONS + GRANT_PUT_ACTIONS + GRANT_KEY_ACTIONS,
        )

    def _manifest_rule(
        self, construct_id: str, manifest_name: str, queues: QueueWithDlq, bucket_name: str
    ) -> events.Rule:
        rule = events.Rule(
            self,
            construct_id,
            description="A site's manifest object was written: the study upload is complete",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [bucket_name]},
                    "object": {
                        "key": events.Match.wildcard(f"{INCOMING_PREFIX}*/*/{manifest_name}")
                    },
                },
            ),
        )
        rule.add_target(
            targets.SqsQueue(
                queues.queue,
                dead_letter_queue=queues.dlq,
                retry_attempts=185,
                max_event_age=Duration.hours(24),
            )
        )
        return rule

    def tell_sites(self, site_queue_urls: str, site_queues: list[sqs.IQueue]) -> None:
        """Preprocess tells a site when its study is refused, so it sends to the results queues.

        The queues belong to `Results`, built after this construct; the stack wires them here.
        """
        fn = self.preprocess.function
        fn.add_environment("SITE_RESULTS_QUEUES", site_queue_urls)
        for queue in site_queues:
            queue.grant_send_messages(fn)
