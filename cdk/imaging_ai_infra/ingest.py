"""Ingest: manifest objects → EventBridge rule → SQS (+DLQ) → each stage the manifest feeds
(lambda_stages.toml: preprocess).

Priority: a STAT study's manifest key ends in STAT_MANIFEST_NAME (the S3 event carries only
the key), so a second rule sends it to the stage's STAT queue. The function drains both, and
the routine mapping is capped `stat_headroom` below the reserved concurrency: a routine
backlog can never take the instances a STAT study needs (docs/priority.md).
"""

from __future__ import annotations

import json

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.names import (
    INCOMING_PREFIX,
    MANIFEST_NAME,
    STAT_MANIFEST_NAME,
    lambda_stages,
)
from imaging_ai_infra.pipeline_function import PipelineFunction, stage_queues
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
        model_endpoints: dict[str, str],
        stat_model_endpoints: dict[str, str] | None = None,
    ) -> None:
        """`model_endpoints`: model name -> the name of the async endpoint serving it;
        `stat_model_endpoints`: the same for the models with a STAT endpoint."""
        super().__init__(scope, construct_id)
        data_bucket = platform.data_bucket
        entries = lambda_stages("manifest-created")
        names = [entry["name"] for entry in entries]
        headroom = {entry["name"]: entry.get("stat_headroom", 0) for entry in entries}
        self.stage_queues = {name: stage_queues(self, platform, name) for name in names}
        # Stage name -> its STAT queue (+DLQ), for the stages with `stat_headroom`.
        self.stat_queues = {
            name: stage_queues(self, platform, name, stat=True) for name in names if headroom[name]
        }
        self.manifest_rule = _manifest_rule(
            self, "ManifestCreated", MANIFEST_NAME, data_bucket.bucket_name, self.stage_queues
        )
        if self.stat_queues:
            self.stat_manifest_rule = _manifest_rule(
                self,
                "StatManifestCreated",
                STAT_MANIFEST_NAME,
                data_bucket.bucket_name,
                self.stat_queues,
            )
        stat_model_endpoints = stat_model_endpoints or {}
        endpoint_names = sorted({*model_endpoints.values(), *stat_model_endpoints.values()})
        self.functions: dict[str, PipelineFunction] = {}
        for name in names:
            function = PipelineFunction(
                self,
                name=name,
                platform=platform,
                environment=platform.function_environment(
                    MODEL_ENDPOINTS=json.dumps(model_endpoints, sort_keys=True),
                    STAT_MODEL_ENDPOINTS=json.dumps(stat_model_endpoints, sort_keys=True),
                ),
            )
            function.grant_stage_data(endpoint_names=endpoint_names)
            if name in self.stat_queues:
                function.consume(
                    self.stage_queues[name].queue,
                    max_concurrency=function.reserved_concurrency - headroom[name],
                )
                function.consume(self.stat_queues[name].queue)
            else:
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


def _manifest_rule(
    scope: Construct,
    construct_id: str,
    manifest_name: str,
    bucket_name: str,
    queues: dict[str, QueueWithDlq],
) -> events.Rule:
    """A rule on `manifest_name` objects of the data bucket, to each of `queues`."""
    rule = events.Rule(
        scope,
        construct_id,
        description="A site's manifest object was written: the study upload is complete",
        event_pattern=events.EventPattern(
            source=["aws.s3"],
            detail_type=["Object Created"],
            detail={
                "bucket": {"name": [bucket_name]},
                "object": {"key": events.Match.wildcard(f"{INCOMING_PREFIX}*/*/{manifest_name}")},
            },
        ),
    )
    for pair in queues.values():
        rule.add_target(
            targets.SqsQueue(
                pair.queue,
                dead_letter_queue=pair.dlq,
                retry_attempts=185,
                max_event_age=Duration.hours(24),
            )
        )
    return rule
