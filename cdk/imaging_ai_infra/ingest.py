"""Ingest: manifest objects → EventBridge rule → SQS (+DLQ) → the preprocess function."""

from __future__ import annotations

import json

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
    resource_prefix,
)
from imaging_ai_infra.pipeline_function import PipelineFunction
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import QueueWithDlq

PREPROCESS_TIMEOUT = Duration.minutes(5)


class Ingest(Construct):
    """Only the manifest, written last by the forwarder, starts a run."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
        model_endpoints: dict[str, str],
    ) -> None:
        """`model_endpoints`: model name -> the name of the async endpoint serving it."""
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
        self.manifest_rule = events.Rule(
            self,
            "ManifestCreated",
            description="A site's manifest object was written: the study upload is complete",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [data_bucket.bucket_name]},
                    "object": {
                        "key": events.Match.wildcard(f"{INCOMING_PREFIX}*/*/{MANIFEST_NAME}")
                    },
                },
            ),
        )
        self.manifest_rule.add_target(
            targets.SqsQueue(
                self.queues.queue,
                dead_letter_queue=self.queues.dlq,
                retry_attempts=185,
                max_event_age=Duration.hours(24),
            )
        )

        self.preprocess = PipelineFunction(
            self,
            "Preprocess",
            name="preprocess",
            description="Decrypts a study, builds the model-ready volume, invokes the endpoint",
            platform=platform,
            environment=platform.function_environment(
                MODEL_ENDPOINTS=json.dumps(model_endpoints, sort_keys=True)
            ),
            timeout=PREPROCESS_TIMEOUT,
            # Measured (benchmarks/pipeline.py, two runs): peak RSS 0.46-0.51 / 1.0 / 1.9 GiB for
            # 200 / 500 / 1,000 slices of 512² (~260 MiB + 1.7 MiB a slice, the float32 volume
            # dominating).
            # 4096 MB holds a 2,000-slice series (~3.6 GiB) with ~12 % to spare, well inside
            # Lambda's 10,240 MB, and buys 2.3 vCPUs (Lambda allots CPU by memory).
            memory_size=4096,
            reserved_concurrency=10 if config.is_prod else 2,
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
                    for endpoint_name in sorted(set(model_endpoints.values()))
                ],
            )
        )
        fn.add_event_source(
            sources.SqsEventSource(self.queues.queue, batch_size=1, report_batch_item_failures=True)
        )
        self.preprocess.acknowledge_grants(
            bucket_resources=bucket_prefix_resources(
                data_bucket, [INCOMING_PREFIX, MODELS_PREFIX, PREPROCESSED_PREFIX]
            ),
            actions=GRANT_READ_ACTIONS + GRANT_PUT_ACTIONS + GRANT_KEY_ACTIONS,
        )

    def tell_sites(self, site_queue_urls: str, site_queues: list[sqs.IQueue]) -> None:
        """Preprocess tells a site when its study is refused, so it sends to the results queues.

        The queues belong to `Results`, built after this construct; the stack wires them here.
        """
        fn = self.preprocess.function
        fn.add_environment("SITE_RESULTS_QUEUES", site_queue_urls)
        for queue in site_queues:
            queue.grant_send_messages(fn)
