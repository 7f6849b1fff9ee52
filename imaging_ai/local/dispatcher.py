"""Feed SQS batches to Lambda handlers in-process, with Lambda's event shape and retry semantics."""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imaging_ai.aws import Credentials, acting_as, client
from imaging_ai.errors import PipelineError
from imaging_ai.lambda_stages import LAMBDA_STAGES, LambdaStage, Trigger
from imaging_ai.local.provision import QueuePair

logger = logging.getLogger(__name__)

# Handlers are resolved by dotted path (LambdaStage.handler): the library never imports the
# deployable units statically.
Handler = Callable[[dict[str, Any], Any], Any]


class DispatchError(PipelineError):
    """A handler path cannot be resolved or returned an invalid batch response."""


def load_handler(dotted_path: str) -> Handler:
    """Resolve "package.module.function" to the function, as Lambda does with its handler."""
    module_name, _, attribute = dotted_path.rpartition(".")
    if not module_name:
        raise DispatchError("handler must be a dotted path: package.module.function")
    handler = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(handler):
        raise DispatchError(f"{dotted_path} is not a callable handler")
    return handler  # type: ignore[no-any-return]


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that Powertools and our handlers read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    timeout_s: float = 900.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    region: str = "us-east-1"
    account_id: str = "123456789012"
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


def sqs_event(messages: Iterable[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping passes for received messages."""
    records = []
    for message in messages:
        attributes = dict(message.get("Attributes", {}))
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attributes.get("SentTimestamp", str(int(time.time() * 1000))),
                    "SenderId": attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO"),
                    "ApproximateFirstReceiveTimestamp": attributes.get(
                        "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
                    ),
                },
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "binaryValue": value.get("BinaryValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": value["DataType"],
                    }
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message.get("MD5OfBody")
                or hashlib.md5(message["Body"].encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


@dataclass
class BatchOutcome:
    received: int = 0
    succeeded: int = 0
    failed: int = 0


@dataclass
class SqsDispatcher:
    """One event source mapping: poll `queue_url`, invoke `handler`, delete what succeeded.

    Like Lambda with `ReportBatchItemFailures`: a returned `batchItemFailures` list leaves
    those messages on the queue and deletes the rest; a raised exception leaves the whole
    batch. Left messages come back after the visibility timeout (`retry_delay_s` shortens it
    locally) and the queue's redrive policy moves them to the DLQ after maxReceiveCount.
    """

    queue_url: str
    handler: str
    function_name: str
    batch_size: int = 10
    wait_time_s: int = 1
    retry_delay_s: int | None = 0
    # The function's execution role: Lambda's event source mapping polls, and an in-process
    # handler runs, as that role. None: the process's own credentials.
    role: Credentials | None = None
    # Runs the handler instead of importing it here (a `FunctionProcess`, say).
    invoker: Handler | None = None
    # A queue drained before `queue_url` (a stage's STAT queue): while it holds messages, the
    # routine queue waits. The local stand-in for AWS's two event source mappings with the
    # routine one capped (docs/priority.md).
    priority_queue_url: str | None = None
    _queue_arns: dict[str, str] = field(default_factory=dict)

    def poll_once(self) -> BatchOutcome:
        with acting_as(self.role):
            if self.priority_queue_url is not None:
                outcome = self._poll_once(self.priority_queue_url, wait_time_s=0)
                if outcome.received:
                    return outcome
            return self._poll_once(self.queue_url, self.wait_time_s)

    def _poll_once(self, queue_url: str, wait_time_s: int) -> BatchOutcome:
        sqs = client("sqs")
        messages = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=wait_time_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return BatchOutcome()
        event = sqs_event(messages, self.queue_arn(queue_url), sqs.meta.region_name)
        failed_ids = self._invoke(event)
        by_id = {message["MessageId"]: message for message in messages}
        succeeded = [m for m in messages if m["MessageId"] not in failed_ids]
        for start in range(0, len(succeeded), 10):
            chunk = succeeded[start : start + 10]
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
                ],
            )
        if self.retry_delay_s is not None:
            for message_id in failed_ids:
                sqs.change_message_visibility(
                    QueueUrl=queue_url,
                    ReceiptHandle=by_id[message_id]["ReceiptHandle"],
                    VisibilityTimeout=self.retry_delay_s,
                )
        return BatchOutcome(
            received=len(messages), succeeded=len(succeeded), failed=len(failed_ids)
        )

    def queue_arn(self, queue_url: str) -> str:
        if queue_url not in self._queue_arns:
            attributes = client("sqs").get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"]
            )
            self._queue_arns[queue_url] = str(attributes["Attributes"]["QueueArn"])
        return self._queue_arns[queue_url]

    def _invoke(self, event: dict[str, Any]) -> set[str]:
        all_ids = {record["messageId"] for record in event["Records"]}
        context = LambdaContext(function_name=self.function_name)
        try:
            response = (self.invoker or load_handler(self.handler))(event, context)
        except Exception:
            # Lambda treats an unhandled error as a failure of the whole batch.
            logger.exception("handler raised; whole batch stays on the queue")
            return all_ids
        if not isinstance(response, Mapping) or "batchItemFailures" not in response:
            return set()
        failures = response["batchItemFailures"] or []
        failed = {str(item.get("itemIdentifier")) for item in failures}
        if not failed <= all_ids:
            # Lambda fails the whole batch when an identifier is unknown or empty.
            return all_ids
        return failed


@dataclass
class LocalEventSources:
    """The four event source mappings of the stack, for the local runtime to drive."""

    dispatchers: list[SqsDispatcher]

    def drain(self, idle_polls: int = 2, timeout_s: float = 60.0) -> BatchOutcome:
        """Poll every queue until all were empty `idle_polls` rounds in a row."""
        total = BatchOutcome()
        idle, deadline = 0, time.monotonic() + timeout_s
        while idle < idle_polls and time.monotonic() < deadline:
            round_received = 0
            for dispatcher in self.dispatchers:
                outcome = dispatcher.poll_once()
                total.received += outcome.received
                total.succeeded += outcome.succeeded
                total.failed += outcome.failed
                round_received += outcome.received
            idle = idle + 1 if round_received == 0 else 0
        return total

    def run_forever(self, stop: threading.Event) -> None:
        """Each mapping long-polls its own queue on its own thread, as Lambda's pollers do.

        Polled in turn by one thread, a message waited for every other queue's long poll
        (up to a second each) before its handler ran, on every hop of the pipeline.
        """
        threads = [
            threading.Thread(
                target=_poll_until, args=(dispatcher, stop), name=f"poll-{dispatcher.function_name}"
            )
            for dispatcher in self.dispatchers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _poll_until(dispatcher: SqsDispatcher, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            dispatcher.poll_once()
        except Exception:  # a poller outlives a queue hiccup, as Lambda's does
            logger.exception("poll failed")
            stop.wait(1.0)


def event_sources(
    queues: Mapping[str, QueuePair],
    wait_time_s: int = 0,
    roles: Mapping[str, Credentials] | None = None,
    invokers: Mapping[str, Handler | Sequence[Handler]] | None = None,
    stages: Iterable[LambdaStage] = LAMBDA_STAGES,
    stat_queues: Mapping[str, QueuePair] | None = None,
) -> LocalEventSources:
    """One mapping per stage and instance on its own queue (its STAT queue first, where
    `stat_queues` names one); a dead-letter stage on every stage's DLQs.

    `queues` maps a stage name to its queues (`LocalResources.queues`); `roles` maps a stage
    name to the credentials of its execution role; `invokers` maps a stage name to what runs
    it (its own process, say), or to several: one instance each, polling the same queues as
    Lambda's concurrent instances do; a stage not named there runs in-process.
    """
    stages = tuple(stages)
    roles = roles or {}
    invokers = invokers or {}
    stat_queues = stat_queues or {}

    def instances(stage: LambdaStage) -> list[Handler | None]:
        given = invokers.get(stage.name)
        if given is None:
            return [None]
        return [given] if callable(given) else list(given)

    def mapping(
        queue_url: str, stage: LambdaStage, invoker: Handler | None, **extra: Any
    ) -> SqsDispatcher:
        return SqsDispatcher(
            queue_url,
            stage.handler,
            stage.name,
            # The table's batch size, as the CDK mapping: preprocess takes one study a call,
            # so a STAT study waits for at most one routine study, never for a batch of them.
            batch_size=stage.batch_size,
            wait_time_s=wait_time_s,
            role=roles.get(stage.name),
            invoker=invoker,
            **extra,
        )

    own = [
        mapping(
            queues[stage.name].url,
            stage,
            invoker,
            priority_queue_url=stat.url if (stat := stat_queues.get(stage.name)) else None,
        )
        for stage in stages
        if stage.has_queue
        for invoker in instances(stage)
    ]
    dlq_urls = {name: [pair.dlq_url] for name, pair in queues.items()}
    for name, pair in stat_queues.items():
        dlq_urls.setdefault(name, []).append(pair.dlq_url)
    dead_letters = [
        mapping(dlq_url, stage, instances(stage)[0])
        for stage in stages
        if stage.trigger is Trigger.DEAD_LETTERS
        for source in stages
        if source.has_queue
        for dlq_url in dlq_urls[source.name]
    ]
    return LocalEventSources([*own, *dead_letters])
