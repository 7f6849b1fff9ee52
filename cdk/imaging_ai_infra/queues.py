"""A work queue with its dead-letter queue, both KMS-encrypted and TLS-only."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.config import StageConfig

MAX_RECEIVE_COUNT = 5
# Dead-letter queues are drained by the failure function (1 minute timeout); Lambda wants the
# visibility timeout at six times the function's.
DLQ_VISIBILITY_TIMEOUT = Duration.minutes(6)


class QueueWithDlq(Construct):
    """`queue` redrives to `dlq` after MAX_RECEIVE_COUNT failed receives."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StageConfig,
        key: kms.IKey,
        queue_name: str,
        visibility_timeout: Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dlq = dead_letter_queue(
            self, "Dlq", config=config, key=key, queue_name=f"{queue_name}-dlq"
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            queue_name=queue_name,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            data_key_reuse=Duration.hours(1),
            enforce_ssl=True,
            visibility_timeout=visibility_timeout,
            retention_period=Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dlq, max_receive_count=MAX_RECEIVE_COUNT
            ),
            removal_policy=config.removal_policy,
        )


def dead_letter_queue(
    scope: Construct, construct_id: str, *, config: StageConfig, key: kms.IKey, queue_name: str
) -> sqs.Queue:
    """A dead-letter queue as every one of the stack's: KMS-encrypted, TLS-only, kept for the
    stage's DLQ retention."""
    return sqs.Queue(
        scope,
        construct_id,
        queue_name=queue_name,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        data_key_reuse=Duration.hours(1),
        enforce_ssl=True,
        retention_period=config.dlq_retention,
        visibility_timeout=DLQ_VISIBILITY_TIMEOUT,
        removal_policy=config.removal_policy,
    )
