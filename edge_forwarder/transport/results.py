"""Long-poll the site's results queue and fetch + decrypt the result objects it names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from pydantic import ValidationError

from edge_forwarder.transport.errors import PermanentError
from imaging_ai import envelope
from imaging_ai.contracts import RESULT_NAMES, SiteResultMessage, encryption_context, result_key

_CONFIG = Config(
    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=3, read_timeout=40
)


@dataclass(frozen=True)
class ReceivedMessage:
    receipt_handle: str
    message: SiteResultMessage | None  # None: refused at parse time, see `problem`
    problem: str | None = None
    message_id: str = ""  # SQS MessageId: keys the record of a refused message


def _problem(error: ValidationError) -> str:
    """Which fields failed and why, never their (untrusted) values."""
    fields = sorted({".".join(str(p) for p in item["loc"]) or "(body)" for item in error.errors()})
    return "not a valid SiteResultMessage: " + ", ".join(fields)[:300]


class ResultsPoller:
    """One site's view of the cloud: its results queue and its result objects."""

    def __init__(
        self,
        site: str,
        bucket: str,
        kms_key_arn: str,
        queue_name: str,
        wait_time_s: int = 20,
        visibility_timeout_s: int = 300,
        region: str | None = None,
        max_object_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        session = boto3.session.Session()
        # An SR, a SEG and a Bundle of one study: far below this, unless something is wrong.
        self.max_object_bytes = max_object_bytes
        self.sqs: Any = session.client("sqs", region_name=region, config=_CONFIG)
        self.s3: Any = session.client("s3", region_name=region, config=_CONFIG)
        self.site = site
        self.bucket = bucket
        self.kms_key_arn = kms_key_arn
        self.queue_name = queue_name
        self.wait_time_s = wait_time_s
        self.visibility_timeout_s = visibility_timeout_s
        self._queue_url: str | None = None

    @property
    def queue_url(self) -> str:
        if self._queue_url is None:
            self._queue_url = str(self.sqs.get_queue_url(QueueName=self.queue_name)["QueueUrl"])
        return self._queue_url

    def receive(self, max_messages: int = 10) -> list[ReceivedMessage]:
        answer = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=self.wait_time_s,
            VisibilityTimeout=self.visibility_timeout_s,
        )
        received = []
        for raw in answer.get("Messages", []):
            handle, message_id = raw["ReceiptHandle"], str(raw.get("MessageId", ""))
            try:
                message = SiteResultMessage.model_validate_json(raw["Body"])
            except ValidationError as error:
                received.append(ReceivedMessage(handle, None, _problem(error), message_id))
                continue
            if message.site != self.site:
                received.append(
                    ReceivedMessage(handle, None, "message for another site", message_id)
                )
                continue
            received.append(ReceivedMessage(handle, message, None, message_id))
        return received

    def ack(self, receipt_handle: str) -> None:
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle)

    def fetch(self, message: SiteResultMessage) -> dict[str, bytes]:
        """Download and decrypt every result object, checking keys and encryption context."""
        context = encryption_context(self.site, message.pseudo_study_uid)
        objects: dict[str, bytes] = {}
        for name in RESULT_NAMES:
            key = message.result_keys.get(name)
            if key is None:
                continue
            # Only the contract's key for this site, study and run: a message cannot send us
            # to read another study's objects.
            if key != result_key(self.site, message.pseudo_study_uid, message.run_id, name):
                raise PermanentError(f"result key for {name} does not match the contract")
            answer = self.s3.get_object(Bucket=self.bucket, Key=key)
            if int(answer.get("ContentLength", 0)) > self.max_object_bytes:
                raise PermanentError(f"result object {name} is larger than the edge accepts")
            body = answer["Body"].read(self.max_object_bytes + 1)
            if len(body) > self.max_object_bytes:
                raise PermanentError(f"result object {name} is larger than the edge accepts")
            objects[name] = envelope.decrypt_bytes(body, self.kms_key_arn, context)
        return objects
