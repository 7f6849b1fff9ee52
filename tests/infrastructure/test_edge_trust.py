"""Roles Anywhere trust per site: one hospital's CA cannot mint another site's identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from aws_cdk.assertions import Template
from imaging_ai_infra.config import load_stage_config
from imaging_ai_infra.edge_access import EdgeAccess
from imaging_ai_infra.platform import Platform

from tests.infrastructure.conftest import SITES, Synthesized
from tests.tls_support import TestCa

pytestmark = pytest.mark.infrastructure


def _edge_template(context: dict[str, Any]) -> dict[str, Any]:
    """Synthesize EdgeAccess alone (seconds, not the whole stage) under `context`."""
    app = App(context={"sites": ",".join(SITES), **context})
    config = load_stage_config(app.node)
    stack = Stack(app, "EdgeOnly")
    key = kms.Key(stack, "Key")
    bucket = s3.Bucket(stack, "Data", encryption_key=key)
    queues: dict[str, sqs.IQueue] = {site: sqs.Queue(stack, f"Q{site}") for site in SITES}
    # EdgeAccess reads the stage config, the data bucket and the data key of the platform.
    platform = Platform(config=config, network=cast(Any, None), data_bucket=bucket,
                        data_key=key, audit_key=key, state_table=cast(Any, None))  # fmt: skip
    EdgeAccess(stack, "EdgeAccess", platform=platform, site_queues=queues)
    return dict(Template.from_stack(stack).to_json())


def _roles_accepting(template: dict[str, Any], issuer_pem: bytes, common_name: str) -> list[str]:
    """Which site roles Roles Anywhere would hand a session for this certificate.

    It evaluates the synthesized trust policies as IAM does for rolesanywhere.amazonaws.com:
    the session's aws:SourceArn is the trust anchor whose bundle holds the issuing CA, and
    its principal tag x509Subject/CN is the certificate's CN.
    """
    resources = template["Resources"]
    anchors = {
        logical_id
        for logical_id, r in resources.items()
        if r["Type"] == "AWS::RolesAnywhere::TrustAnchor"
        and issuer_pem.decode().strip()
        in r["Properties"]["Source"]["SourceData"]["X509CertificateData"]
    }
    accepting = []
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for statement in resource["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
            if statement["Action"] != "sts:AssumeRole":
                continue
            condition = statement["Condition"]
            source = condition["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0]
            cn = condition["StringEquals"]["aws:PrincipalTag/x509Subject/CN"]
            if source in anchors and cn == common_name:
                accepting.append(logical_id)
    return accepting


@pytest.fixture(scope="module")
def hospital_cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TestCa]:
    folder = tmp_path_factory.mktemp("edge-pki")
    return {site: TestCa(folder / site, f"hospital-{site}") for site in SITES}


def test_hospital_a_ca_minting_site_b_cn_gets_no_role(hospital_cas: dict[str, TestCa]) -> None:
    # Given each site's own CA as its trust anchor
    files = ",".join(f"{site}={ca.cert}" for site, ca in hospital_cas.items())
    template = _edge_template({"edge_ca_certificate_files": files})
    site_a, site_b = SITES
    # When hospital A's CA issues a certificate claiming CN=site-b
    forged = _roles_accepting(template, hospital_cas[site_a].pem, site_b)
    # Then no role accepts it, while each CA still gets its own site's role (and only that)
    assert forged == []
    for site in SITES:
        (role,) = _roles_accepting(template, hospital_cas[site].pem, site)
        assert role.startswith(f"EdgeAccessSiteRole{site.replace('-', '')}")


def test_one_ca_for_two_sites_is_refused_at_synth(
    tmp_path: Path, hospital_cas: dict[str, TestCa]
) -> None:
    # Given the same CA named for both sites (a copy under another file name)
    copy = tmp_path / "copy.pem"
    copy.write_bytes(hospital_cas[SITES[0]].pem)
    files = f"{SITES[0]}={hospital_cas[SITES[0]].cert},{SITES[1]}={copy}"
    # When the stage is configured, Then synthesis stops and says why
    with pytest.raises(ValueError, match="same edge CA"):
        _edge_template({"edge_ca_certificate_files": files})


def test_the_old_shared_ca_setting_is_refused(hospital_cas: dict[str, TestCa]) -> None:
    with pytest.raises(ValueError, match="each site its own CA"):
        _edge_template({"edge_ca_certificate_file": str(hospital_cas[SITES[0]].cert)})


def test_stage_stack_has_an_anchor_and_a_parameter_per_site(dev: Synthesized) -> None:
    # Given the dev stage synthesized without CA files: each site's CA is a deploy parameter
    anchors = dev.resources("AWS::RolesAnywhere::TrustAnchor")
    assert len(anchors) == len(SITES)
    parameters = {
        anchor["Properties"]["Source"]["SourceData"]["X509CertificateData"]["Ref"]
        for anchor in anchors.values()
    }
    assert len(parameters) == len(SITES) and parameters <= set(dev.template["Parameters"])
    # And each site's role trusts exactly one anchor, not another site's
    trusted = set()
    for site in SITES:
        role = next(
            r["Properties"]
            for logical_id, r in dev.resources("AWS::IAM::Role").items()
            if logical_id.startswith(f"EdgeAccessSiteRole{site.replace('-', '')}")
        )
        sources = {
            s["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0]
            for s in role["AssumeRolePolicyDocument"]["Statement"]
        }
        assert len(sources) == 1 and sources <= set(anchors)
        trusted |= sources
    assert trusted == set(anchors)
