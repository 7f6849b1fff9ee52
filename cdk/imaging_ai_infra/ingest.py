"""Ingest: manifest objects → EventBridge rule → SQS (+DLQ) → each stage the manifest feeds
(lambda_stages.toml: preprocess)."""

from __future__ import annotations

import json

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.names import INCOMING_PREFIX, MANIFEST_NAME, lambda_stages
from imaging_ai_infra.pipeline_function import PipelineFunction, stage_queues
from imaging_ai_infra.platform import Platform


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
        data_bucket = platform.data_bucket
        names = [entry["name"] for entry in lambda_stages("manifest-created")]
        self.stage_queues = {name: stage_queues(self, platform, name) for name in names}
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
        for queues in self.stage_queues.values():
            self.manifest_rule.add_target(
                targets.SqsQueue(
                    queues.queue,
                    dead_letter_queue=queues.dlq,
                    retry_attempts=185,
                    max_event_age=Duration.hours(24),
                )
            )
        self.functions: dict[str, PipelineFunction] = {}
        for name in names:
            function = PipelineFunction(
                self,
                name=name,
                platform=platform,
                environment=platform.function_environment(
                    MODEL_ENDPOINTS=json.dumps(model_endpoints, sort_keys=True)
                ),
            )
            function.grant_stage_data(endpoint_names=sorted(set(model_endpoints.values())))
            function.consume(self.stage_queues[name].queue)
            function.acknowledge_grants()
            self.functions[name] = function

    def tell_sites(self, site_queue_urls: str, site_queues: list[sqs.IQueue]) -> None:
        """Preprocess tells a site when its study is refused, so it sends to the results queues.

        The queues belong to `Results`, built after this construct; the stack wires them here.
        """
        for function in self.functions.values():
            function.function.add_environment("SITE_RESULTS_QUEUES", site_queue_urls)
            for queue in site_queues:
                queue.grant_send_messages(function.function)
