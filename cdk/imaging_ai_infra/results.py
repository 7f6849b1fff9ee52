"""Results: inference notifications → SQS (+DLQ) → postprocess → one results queue per site;
every DLQ → the failure function → a FAILED state and a message to the site."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.nag import (
    GRANT_KEY_ACTIONS,
    GRANT_PUT_ACTIONS,
    GRANT_READ_ACTIONS,
    bucket_object_resources,
    bucket_prefix_resources,
)
from imaging_ai_infra.names import (
    INCOMING_PREFIX,
    INFERENCE_FAILURE_PREFIX,
    INFERENCE_OUTPUT_PREFIX,
    MANIFEST_NAME,
    MODELS_PREFIX,
    PREPROCESSED_PREFIX,
    RESULTS_PREFIX,
    STAT_MANIFEST_NAME,
    resource_prefix,
    site_results_queue_name,
)
from imaging_ai_infra.pipeline_function import PipelineFunction
from imaging_ai_infra.platform import Platform
from imaging_ai_infra.queues import QueueWithDlq

POSTPROCESS_TIMEOUT = Duration.minutes(5)
FAILURE_TIMEOUT = Duration.minutes(1)
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
        config, data_bucket, data_key = platform.config, platform.data_bucket, platform.data_key
        state_table = platform.state_table
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
            visibility_timeout=Duration.seconds(POSTPROCESS_TIMEOUT.to_seconds() * 6),
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
            description="Builds DICOM SEG + SR and the FHIR Bundle, encrypts them, tells the site",
            platform=platform,
            environment=common_environment,
            timeout=POSTPROCESS_TIMEOUT,
            # Measured (benchmarks/pipeline.py, two runs): peak RSS 312-335 / 403-405 / 558-561 MiB
            # for 200 / 500 / 1,000 slices (~0.9 GiB at 2,000). The rest of 2048 MB is for CPU
            # share: Lambda allots CPU by memory, and SEG + SR + FHIR must take about a second.
            memory_size=2048,
            reserved_concurrency=10 if config.is_prod else 2,
        )
        fn = self.postprocess.function
        # incoming/: the key images burn outlines into the de-identified source slices.
        for readable in (
            INCOMING_PREFIX,
            INFERENCE_OUTPUT_PREFIX,
            INFERENCE_FAILURE_PREFIX,
            PREPROCESSED_PREFIX,
            MODELS_PREFIX,
        ):
            data_bucket.grant_read(fn, f"{readable}*")
        data_bucket.grant_put(fn, f"{RESULTS_PREFIX}*")
        data_key.grant_encrypt_decrypt(fn)
        state_table.grant_read_write_data(fn)
        for queues in self.site_queues.values():
            queues.queue.grant_send_messages(fn)
        fn.add_event_source(
            sources.SqsEventSource(self.queues.queue, batch_size=1, report_batch_item_failures=True)
        )
        self.postprocess.acknowledge_grants(
            bucket_resources=bucket_prefix_resources(
                data_bucket,
                [
                    INCOMING_PREFIX,
                    INFERENCE_OUTPUT_PREFIX,
                    INFERENCE_FAILURE_PREFIX,
                    PREPROCESSED_PREFIX,
                    MODELS_PREFIX,
                    RESULTS_PREFIX,
                ],
            ),
            actions=GRANT_READ_ACTIONS + GRANT_PUT_ACTIONS + GRANT_KEY_ACTIONS,
        )

        self.failure = PipelineFunction(
            self,
            "Failure",
            name="failure",
            description="Turns a dead-lettered message into a FAILED state and a site message",
            platform=platform,
            environment=common_environment,
            timeout=FAILURE_TIMEOUT,
            memory_size=512,
            reserved_concurrency=2,
        )
        failure_fn = self.failure.function
        # A dead-lettered manifest event names the run only inside its manifest: the failure
        # function reads manifests (GetObject on the commit markers), nothing else in incoming/.
        manifests = [f"{INCOMING_PREFIX}*/{name}" for name in (MANIFEST_NAME, STAT_MANIFEST_NAME)]
        failure_fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[data_bucket.arn_for_objects(pattern) for pattern in manifests],
            )
        )
        data_key.grant_encrypt_decrypt(failure_fn)
        state_table.grant_read_write_data(failure_fn)
        for queues in self.site_queues.values():
            queues.queue.grant_send_messages(failure_fn)
        # If the failure function itself fails, the message stays in its DLQ (14 days) and the
        # DLQ-depth alarm fires: the last line against silence.
        for dlq in [*upstream_dlqs, self.queues.dlq]:
            failure_fn.add_event_source(
                sources.SqsEventSource(dlq, batch_size=10, report_batch_item_failures=True)
            )
        self.failure.acknowledge_grants(
            bucket_resources=bucket_object_resources(data_bucket, manifests),
            actions=GRANT_KEY_ACTIONS,
        )
