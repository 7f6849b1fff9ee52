"""The edge forwarder uploads, resumes and fetches results as its site's CDK role, and no more."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge_forwarder.transport.uploader import Uploader
from imaging_ai import envelope
from imaging_ai.aws import Credentials, acting_as, client, reset_clients
from imaging_ai.contracts import manifest_key
from tests.integration.iam.conftest import IamStack
from tests.integration.transport.conftest import SITE, CloudSide, Ehr, Pacs
from tests.integration.transport.helpers import completed_study
from tests.integration.transport.test_upload_faults import _settings, killed_mid_upload

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
    edge = completed_study(tmp_path, cloud, pacs.port, ehr.url, seed=11)
    forwarder, study = edge.forwarder, edge.study

    # When it uploads a study, the cloud answers, and it fetches the results
    forwarder.outbound.tick()
    (run,) = forwarder.journal.runs()
    assert run.stage == "uploaded"
    with acting_as(iam_stack.identities.deployer):
        cloud.answer(cloud.read_manifest(run.pseudo_study_uid), study)
    forwarder.inbound.tick()

    # Then SR + SEG reached the PACS and the Bundle the EHR: no call needed more than the role
    assert sorted(ds.Modality for ds in pacs.received()) == ["SEG", "SR"]
    assert len(ehr.received) == 1


def test_a_killed_upload_resumes_as_the_site_role(
    iam_stack: IamStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a 22 MiB series being uploaded, as site-a's role, by a process that is killed
    key_arn = iam_stack.resources.kms_key_arn
    _run_as_site(monkeypatch, iam_stack.site(SITE))
    journal, run_id, _ = killed_mid_upload(tmp_path, "imaging-ai-data", key_arn)

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
