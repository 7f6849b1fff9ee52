"""Ingest: manifest objects → EventBridge rule → SQS (+DLQ) → the preprocess function."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.names import INCOMING_PREFIX, MANIFEST_NAME, resource_prefix
from imaging_ai_infra.pipeline_function import PipelineFunction, stage_timeout
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import QueueWithDlq


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
        self.queues = QueueWithDlq(
            self,
            "PreprocessQueue",
            config=config,
            key=data_key,
            queue_name=f"{resource_prefix(config.stage)}-preprocess",
            visibility_timeout=Duration.seconds(stage_timeout("preprocess").to_seconds() * 6),
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
            platform=platform,
            environment=platform.function_environment(ENDPOINT_NAME=endpoint_name),
        )
        self.preprocess.grant_stage_data(endpoint_name=endpoint_name)
        self.preprocess.consume(self.queues.queue)
        self.preprocess.acknowledge_grants()

    def tell_sites(self, site_queue_urls: str, site_queues: list[sqs.IQueue]) -> None:
        """Preprocess tells a site when its study is refused, so it sends to the results queues.

        The queues belong to `Results`, built after this construct; the stack wires them here.
        """
        fn = self.preprocess.function
        fn.add_environment("SITE_RESULTS_QUEUES", site_queue_urls)
        for queue in site_queues:
            queue.grant_send_messages(fn)
