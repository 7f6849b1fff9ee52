"""Results: inference notifications → SQS (+DLQ) → each stage they feed (postprocess) → one
results queue per site; every DLQ → the dead-letter stage (failure) → a FAILED state and a
message to the site. The stages are lambda_stages.toml's."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.names import lambda_stages, site_results_queue_name
from imaging_ai_infra.pipeline_function import PipelineFunction, stage_queues
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import QueueWithDlq

# The postprocess function parses the standard SNS envelope (Powertools SnsSqsEnvelope), the
# same shape the local moto runtime delivers; raw delivery would drop the topic ARN.
RAW_MESSAGE_DELIVERY = False


class Results(Construct):
    """The notified and dead-letter functions, and the queues the sites' forwarders poll."""

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
        self.site_queue_urls = Stack.of(self).to_json_string(
            {site: queues.queue.queue_url for site, queues in self.site_queues.items()}
        )

        notified = [entry["name"] for entry in lambda_stages("inference-notifications")]
        self.stage_queues = {name: stage_queues(self, platform, name) for name in notified}
        for queues in self.stage_queues.values():
            for topic in (success_topic, error_topic):
                topic.add_subscription(
                    subscriptions.SqsSubscription(
                        queues.queue, raw_message_delivery=RAW_MESSAGE_DELIVERY
                    )
                )

        self.functions: dict[str, PipelineFunction] = {}
        for name in notified:
            self.functions[name] = self._site_telling_function(platform, name)
            self.functions[name].consume(self.stage_queues[name].queue)
            self.functions[name].acknowledge_grants()
        # If a dead-letter function itself fails, the message stays in its DLQ (14 days) and
        # the DLQ-depth alarm fires: the last line against silence.
        dlqs = [*upstream_dlqs, *(queues.dlq for queues in self.stage_queues.values())]
        for entry in lambda_stages("dead-letters"):
            name = entry["name"]
            self.functions[name] = self._site_telling_function(platform, name)
            self.functions[name].consume(*dlqs)
            self.functions[name].acknowledge_grants()

    def _site_telling_function(self, platform: Platform, name: str) -> PipelineFunction:
        """The stage's function with its table grants, allowed to tell every site."""
        function = PipelineFunction(
            self,
            name=name,
            platform=platform,
            environment=platform.function_environment(SITE_RESULTS_QUEUES=self.site_queue_urls),
        )
        function.grant_stage_data()
        for queues in self.site_queues.values():
            queues.queue.grant_send_messages(function.function)
        return function
