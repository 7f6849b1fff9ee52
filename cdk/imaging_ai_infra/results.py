"""Results: inference notifications → SQS (+DLQ) → postprocess → one results queue per site;
every DLQ → the failure function → a FAILED state and a message to the site."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.names import resource_prefix, site_results_queue_name
from imaging_ai_infra.pipeline_function import PipelineFunction, stage_timeout
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import QueueWithDlq

# The postprocess function parses the standard SNS envelope (Powertools SnsSqsEnvelope), the
# same shape the local moto runtime delivers; raw delivery would drop the topic ARN.
RAW_MESSAGE_DELIVERY = False


class Results(Construct):
    """Postprocess and failure functions, and the queues the sites' forwarders poll."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
        success_topic: sns.ITopic,
        error_topic: sns.ITopic,
        upstream_dlqs: list[sqs.IQueue],
    ) -> None:
        super().__init__(scope, construct_id)
        config, data_key = platform.config, platform.data_key
        prefix = resource_prefix(config.stage)

        self.site_queues: dict[str, QueueWithDlq] = {
            site: QueueWithDlq(
                self,
                f"ResultsQueue-{site}",
                config=config,
                key=data_key,
                queue_name=site_results_queue_name(config.stage, site),
                visibility_timeout=Duration.minutes(15),  # the forwarder's fetch + re-id + C-STORE
            )
            for site in config.sites
        }
        # JSON {site: queue_url}: SITE_RESULTS_QUEUES of every function that tells a site.
        self.site_queue_urls = site_queue_urls = Stack.of(self).to_json_string(
            {site: queues.queue.queue_url for site, queues in self.site_queues.items()}
        )

        self.queues = QueueWithDlq(
            self,
            "PostprocessQueue",
            config=config,
            key=data_key,
            queue_name=f"{prefix}-postprocess",
            visibility_timeout=Duration.seconds(stage_timeout("postprocess").to_seconds() * 6),
        )
        for topic in (success_topic, error_topic):
            topic.add_subscription(
                subscriptions.SqsSubscription(
                    self.queues.queue, raw_message_delivery=RAW_MESSAGE_DELIVERY
                )
            )

        common_environment = platform.function_environment(SITE_RESULTS_QUEUES=site_queue_urls)
        self.postprocess = PipelineFunction(
            self,
            "Postprocess",
            name="postprocess",
            platform=platform,
            environment=common_environment,
        )
        self.postprocess.grant_stage_data()
        for queues in self.site_queues.values():
            queues.queue.grant_send_messages(self.postprocess.function)
        self.postprocess.consume(self.queues.queue)
        self.postprocess.acknowledge_grants()

        self.failure = PipelineFunction(
            self, "Failure", name="failure", platform=platform, environment=common_environment
        )
        self.failure.grant_stage_data()
        for queues in self.site_queues.values():
            queues.queue.grant_send_messages(self.failure.function)
        # If the failure function itself fails, the message stays in its DLQ (14 days) and the
        # DLQ-depth alarm fires: the last line against silence.
        self.failure.consume(*upstream_dlqs, self.queues.dlq)
        self.failure.acknowledge_grants()
