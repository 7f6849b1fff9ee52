"""The edge forwarder uploads, resumes and fetches results as its site's CDK role, and no more."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_forwarder.transport.uploader import Uploader
from imaging_ai import envelope
from imaging_ai.aws import Credentials, acting_as, client, reset_clients
from imaging_ai.contracts import manifest_key
from imaging_ai.synthetic import write_ct_study
from tests.cloud_contract import role_specs, site_role
from tests.integration.iam.conftest import IamStack
from tests.integration.transport.conftest import (
    SITE,
    CloudSide,
    Ehr,
    FakeCompleted,
    ListIntake,
    Pacs,
    write_config,
)
from tests.integration.transport.helpers import service_from_config
from tests.integration.transport.test_upload_faults import (
    _CHILD,
    MIB,
    _prepared_run,
    _settings,
    _wait_for,
)

pytestmark = pytest.mark.integration
OTHER_SITE = "site-b"


def _run_as_site(monkeypatch: pytest.MonkeyPatch, credentials: Credentials) -> None:
    """The forwarder's process has its site role's credentials and nothing else, as at a
    hospital; the test's own checks say `acting_as(deployer)` explicitly."""
    for name, value in credentials.environment().items():
        monkeypatch.setenv(name, value)
    reset_clients()
    envelope.reset_providers()


def test_the_forwarder_uploads_and_fetches_results_as_its_site_role(
    iam_stack: IamStack, tmp_path: Path, pacs: Pacs, ehr: Ehr, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a forwarder of site-a whose process holds only site-a's role
    resources = iam_stack.resources
    cloud = CloudSide(resources.kms_key_arn, resources.site_results_queues[SITE])
    _run_as_site(monkeypatch, iam_stack.site(SITE))
    study = write_ct_study(
        tmp_path / "ct", seed=11, shape=(24, 128, 128), spacing_mm=(2.5, 2.5, 2.5), nodule_count=1
    )
    intake = ListIntake(
        [FakeCompleted("study-1", 1, "default", {study.series_instance_uid: study.paths})]
    )
    service, _ = service_from_config(write_config(tmp_path, cloud, pacs.port, ehr.url), intake)

    # When it uploads a study, the cloud answers, and it fetches the results
    service.outbound_tick()
    (run,) = service.journal.runs()
    assert run.stage == "uploaded"
    with acting_as(iam_stack.identities.deployer):
        cloud.answer(cloud.read_manifest(run.pseudo_study_uid), study)
    service.inbound_tick()

    # Then SR + SEG reached the PACS and the Bundle the EHR: no call needed more than the role
    assert sorted(ds.Modality for ds in pacs.received()) == ["SEG", "SR"]
    assert len(ehr.received) == 1


def test_a_killed_upload_resumes_as_the_site_role(
    iam_stack: IamStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a 22 MiB series being uploaded, as site-a's role, by a process that is killed
    key_arn = iam_stack.resources.kms_key_arn
    _run_as_site(monkeypatch, iam_stack.site(SITE))
    journal, run_id = _prepared_run(tmp_path, key_arn)
    args = {"bucket": "imaging-ai-data", "key": key_arn, "rate": 5 * MIB}
    args["journal"] = str(tmp_path / "journal.sqlite")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(args)], env=os.environ.copy()
    )
    try:
        _wait_for(lambda: sum(len(r.parts) for r in journal.objects(run_id)) >= 2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)

    # When a fresh uploader resumes it (ListParts, the remaining parts, Complete, manifest)
    Uploader(_settings(key_arn), journal).upload(run_id)

    # Then every object is stored whole under the contract's keys, nothing half-done remains
    rows = journal.objects(run_id)
    with acting_as(iam_stack.identities.deployer):
        s3 = client("s3")
        listed = {
            o["Key"]
            for o in s3.list_objects_v2(Bucket="imaging-ai-data", Prefix="incoming/")["Contents"]
        }
        assert listed == {r.object_key for r in rows}
        assert manifest_key(SITE, "2.25.111") in listed
        assert not s3.list_multipart_uploads(Bucket="imaging-ai-data").get("Uploads")
        for row in rows:
            body = s3.get_object(Bucket="imaging-ai-data", Key=row.object_key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == row.sha256


def _other_sites_object(stack: IamStack, prefix: str) -> str:
    key = f"{prefix}/{OTHER_SITE}/2.25.9/run-1/sr.dcm.enc"
    with acting_as(stack.identities.deployer):
        client("s3").put_object(Bucket=stack.resources.data_bucket, Key=key, Body=b"x")
    return key


@pytest.mark.parametrize("prefix", ["incoming", "results"])
def test_a_site_cannot_read_another_sites_objects(iam_stack: IamStack, prefix: str) -> None:
    # Given an object of site-b
    key = _other_sites_object(iam_stack, prefix)
    # When site-a's role reads it, Then it is refused
    with acting_as(iam_stack.site(SITE)), iam_stack.denied("s3:GetObject"):
        client("s3").get_object(Bucket=iam_stack.resources.data_bucket, Key=key)


@pytest.mark.parametrize(
    "key", [f"incoming/{OTHER_SITE}/2.25.9/2.25.8.tar.enc", f"results/{SITE}/2.25.9/r/sr.dcm.enc"]
)
def test_a_site_cannot_write_another_sites_uploads_or_any_results(
    iam_stack: IamStack, key: str
) -> None:
    # When site-a's role writes under site-b's uploads, or under results/ (even its own),
    # Then it is refused
    with acting_as(iam_stack.site(SITE)), iam_stack.denied("s3:PutObject"):
        client("s3").put_object(Bucket=iam_stack.resources.data_bucket, Key=key, Body=b"x")


def test_a_site_cannot_poll_another_sites_results_queue(iam_stack: IamStack) -> None:
    queue_url = iam_stack.resources.site_results_queues[OTHER_SITE]
    with acting_as(iam_stack.site(SITE)), iam_stack.denied("sqs:ReceiveMessage"):
        client("sqs").receive_message(QueueUrl=queue_url)


def test_every_key_use_of_a_site_role_is_pinned_to_its_site_or_to_a_service(
    iam_stack: IamStack, contract_template: dict[str, Any]
) -> None:
    """moto does not evaluate IAM conditions, so "site-a cannot decrypt with site-b's encryption
    context" cannot be shown by a call here; the template must carry the condition instead."""
    specs = {spec.name: spec for spec in role_specs(contract_template, iam_stack.resources)}
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
