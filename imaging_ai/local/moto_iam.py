"""moto server with IAM enforcement that names the resource of every call it authorizes.

Run as `python -m imaging_ai.local.moto_iam -H 127.0.0.1 -p PORT` (the moto server's own
arguments) with `INITIAL_NO_AUTH_ACTION_COUNT=0` in the environment.

What moto 5.2 evaluates by itself, read from `moto/iam/access_control.py`:
- identity policies of IAM users and assumed roles (inline and attached), Allow and Deny,
  action wildcards, and the trust policy of a role on AssumeRole;
- the Resource element only for S3 (bucket / object ARN), SQS (queue ARN), STS (role ARN);
  every other service is authorized against "*", so a least-privilege statement naming a KMS
  key, a DynamoDB table or an SNS topic never matches and the call is denied;
- Condition blocks are not evaluated on identity policies (no context values are passed): a
  statement with `kms:EncryptionContext:*`, `kms:ViaService`, `s3:prefix` or
  `aws:RequestedRegion` conditions acts as if it had none;
- no service-to-service checks: S3 does not ask KMS for SSE-KMS objects and SQS does not for
  SSE queues, so statements conditioned on `kms:ViaService` are never exercised.

- SQS GetQueueUrl is authorized against "*" (moto reads the queue from QueueUrl only);
- it authorizes a batch call by its API name (`sqs:DeleteMessageBatch`), where IAM uses the
  single action (`sqs:DeleteMessage`), and HeadBucket as `s3:HeadBucket` (IAM: s3:ListBucket).

This entry point maps those API names to their IAM actions, and adds the resource of KMS (the
key ARN, aliases resolved), DynamoDB (the table ARN) and SNS (the topic ARN) calls, so those
statements are evaluated as AWS would.
It also appends each denial as a JSON line to `$IMAGING_AI_IAM_DENIALS` (when set): code
that turns an AccessDenied into another error cannot hide it from a test.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

DENIALS_ENV = "IMAGING_AI_IAM_DENIALS"
# API operations that IAM authorizes under another action's name.
IAM_ACTIONS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "s3:HeadBucket": "s3:ListBucket",
}
_LOCK = threading.Lock()
_ORIGINAL_SQS_RESOURCE: Any = None


def _params(response: Any) -> dict[str, Any]:
    params = getattr(response, "params", None)
    if isinstance(params, dict) and params:
        return params
    body = getattr(response, "body", None)
    if isinstance(body, dict):
        return body
    if isinstance(body, bytes | str) and body:
        try:
            loaded = json.loads(body)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            return loaded
    querystring = getattr(response, "querystring", {}) or {}
    return {name: values[0] for name, values in querystring.items() if values}


def _kms_resource(self: Any) -> str:
    from moto.kms.models import kms_backends

    key_id = _params(self).get("KeyId")
    if not key_id:
        return "*"
    try:
        return str(kms_backends[self.current_account][self.region].describe_key(key_id).arn)
    except Exception:  # an unknown key: moto's own handler answers NotFound
        return "*"


def _dynamodb_resource(self: Any) -> str:
    params = _params(self)
    table = params.get("TableName")
    if not table and isinstance(params.get("RequestItems"), dict):
        names = list(params["RequestItems"])
        table = names[0] if len(names) == 1 else None
    if not table:
        return "*"
    return f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{table}"


def _sqs_resource(self: Any) -> str:
    # moto names the queue from QueueUrl only; GetQueueUrl carries QueueName instead.
    if self._get_action() == "GetQueueUrl":
        name = _params(self).get("QueueName")
        if name:
            return f"arn:aws:sqs:{self.region}:{self.current_account}:{name}"
    return str(_ORIGINAL_SQS_RESOURCE(self))


def _sns_resource(self: Any) -> str:
    params = _params(self)
    return str(params.get("TopicArn") or params.get("TargetArn") or "*")


def _record_denials() -> None:
    from moto.iam import access_control

    original = access_control.IAMRequestBase.check_action_permitted
    path = os.environ.get(DENIALS_ENV)

    def check_action_permitted(self: Any, resource: str) -> None:
        self._action = IAM_ACTIONS.get(self._action, self._action)
        try:
            original(self, resource)
        except Exception:
            if path:
                entry = {
                    "action": self._action,
                    "resource": resource,
                    "principal": self._access_key.arn,
                }
                with _LOCK, open(path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(entry) + "\n")
            raise

    access_control.IAMRequestBase.check_action_permitted = check_action_permitted  # type: ignore[method-assign]


def install() -> None:
    """Patch moto's response classes in this process (the server's)."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.kms.responses import KmsResponse
    from moto.sns.responses import SNSResponse
    from moto.sqs.responses import SQSResponse

    global _ORIGINAL_SQS_RESOURCE
    _ORIGINAL_SQS_RESOURCE = SQSResponse._determine_resource
    SQSResponse._determine_resource = _sqs_resource  # type: ignore[method-assign]

    KmsResponse._determine_resource = _kms_resource  # type: ignore[attr-defined]
    DynamoHandler._determine_resource = _dynamodb_resource  # type: ignore[attr-defined]
    SNSResponse._determine_resource = _sns_resource  # type: ignore[attr-defined]
    _record_denials()


def main(argv: list[str] | None = None) -> None:
    install()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
