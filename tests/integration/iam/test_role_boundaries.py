"""What the CDK roles must NOT allow: a site outside its own prefixes and queue, a function
outside its own queues. One stack serves every probe here (they change nothing)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from functions.drift.service import DriftService
from imaging_ai.aws import acting_as, client
from imaging_ai.state import RunStateStore
from tests.cloud_contract import role_specs, site_role
from tests.integration.iam.conftest import IamStack

pytestmark = pytest.mark.integration
SITE, OTHER_SITE = "site-a", "site-b"


def _other_sites_object(stack: IamStack, prefix: str) -> str:
    key = f"{prefix}/{OTHER_SITE}/2.25.9/run-1/sr.dcm.enc"
    with acting_as(stack.identities.deployer):
        client("s3").put_object(Bucket=stack.resources.data_bucket, Key=key, Body=b"x")
    return key


@pytest.mark.parametrize("prefix", ["incoming", "results"])
def test_a_site_cannot_read_another_sites_objects(iam_probe: IamStack, prefix: str) -> None:
    # Given an object of site-b
    key = _other_sites_object(iam_probe, prefix)
    # When site-a's role reads it, Then it is refused
    with acting_as(iam_probe.site(SITE)), iam_probe.denied("s3:GetObject"):
        client("s3").get_object(Bucket=iam_probe.resources.data_bucket, Key=key)


@pytest.mark.parametrize(
    "key", [f"incoming/{OTHER_SITE}/2.25.9/2.25.8.tar.enc", f"results/{SITE}/2.25.9/r/sr.dcm.enc"]
)
def test_a_site_cannot_write_another_sites_uploads_or_any_results(
    iam_probe: IamStack, key: str
) -> None:
    # When site-a's role writes under site-b's uploads, or under results/ (even its own),
    # Then it is refused
    with acting_as(iam_probe.site(SITE)), iam_probe.denied("s3:PutObject"):
        client("s3").put_object(Bucket=iam_probe.resources.data_bucket, Key=key, Body=b"x")


def test_a_site_cannot_poll_another_sites_results_queue(iam_probe: IamStack) -> None:
    queue_url = iam_probe.resources.site_results_queues[OTHER_SITE]
    with acting_as(iam_probe.site(SITE)), iam_probe.denied("sqs:ReceiveMessage"):
        client("sqs").receive_message(QueueUrl=queue_url)


def test_every_key_use_of_a_site_role_is_pinned_to_its_site_or_to_a_service(
    iam_probe: IamStack, contract_template: dict[str, Any]
) -> None:
    """moto does not evaluate IAM conditions, so "site-a cannot decrypt with site-b's encryption
    context" cannot be shown by a call here; the template must carry the condition instead."""
    specs = {spec.name: spec for spec in role_specs(contract_template, iam_probe.resources)}
    for site in ("site-a", "site-b", "demo-site"):
        statements = [
            statement
            for document in specs[site_role(site)].policies.values()
            for statement in document["Statement"]
            if any(str(action).startswith("kms:") for action in _listed(statement["Action"]))
        ]
        assert statements
        for statement in statements:
            condition = statement.get("Condition", {})
            pinned = condition.get("StringEquals", {}).get("kms:EncryptionContext:site") == site
            via_service = "kms:ViaService" in condition.get("StringEquals", {})
            assert pinned or via_service, statement


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize(
    ("function", "foreign_queue"),
    [
        ("preprocess", "postprocess"),
        ("postprocess", "preprocess"),
        ("failure", "preprocess"),
        ("failure", "postprocess"),
    ],
)
def test_a_function_cannot_consume_another_functions_queue(
    iam_probe: IamStack, function: str, foreign_queue: str
) -> None:
    # Given a function's role and a work queue that belongs to another function
    queue_url = getattr(iam_probe.resources, foreign_queue).url
    # When it tries to receive from that queue, Then it is refused
    with acting_as(iam_probe.function(function)), iam_probe.denied("sqs:ReceiveMessage"):
        client("sqs").receive_message(QueueUrl=queue_url)


def test_the_drift_check_reads_the_state_table_as_its_role_and_cannot_write_it(
    iam_probe: IamStack,
) -> None:
    # Given the drift function's role (the schedule's; it only compares runs with baselines)
    with acting_as(iam_probe.function("drift")):
        store = RunStateStore(client("dynamodb"), iam_probe.resources.state_table)
        # When it runs its pass and reads a baseline, Then both reads are allowed
        assert DriftService(store, window_days=7).check(datetime.now(UTC)) == []
        assert store.baseline(SITE, "lung-nodule-demo") is None
        # But writing a baseline (the operator's CLI does that) is refused
        with iam_probe.denied("dynamodb:PutItem"):
            store.put_baseline(SITE, "lung-nodule-demo", "{}")
