"""Principals of an IAM-enforcing moto server: a deployer, and the stack's roles to act as.

The role policies come from the synthesized CDK template (the tests read them); here they are
created as they are, and each role is assumed to get the credentials its code runs under. The
trust policies are not CDK's: moto cannot act as lambda.amazonaws.com, sagemaker.amazonaws.com
or IAM Roles Anywhere, so each role trusts the deployer, who assumes it on their behalf.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

from imaging_ai.aws import Credentials
from imaging_ai.errors import PipelineError
from imaging_ai.lambda_stages import LAMBDA_STAGES
from imaging_ai.local.moto_server import FAKE_CREDENTIALS, MotoServer

DEPLOYER_USER = "imaging-ai-deployer"
_DEPLOYER_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
# create_user, put_user_policy, create_access_key: the calls that make the first principal.
_BOOTSTRAP_CALLS = 3
# How the local runtime names the stack's roles (the tests map the template's roles to these).
SAGEMAKER_ROLE = "imaging-ai-sagemaker-execution"


def function_role(name: str) -> str:
    """The execution role of the Lambda stage `name` (lambda_stages.toml)."""
    return f"imaging-ai-{name}-role"


def site_role(site: str) -> str:
    """The role a site's edge forwarder runs as."""
    return f"imaging-ai-site-{site}"


def stack_roles(sites: Iterable[str]) -> set[str]:
    """Every role the local runtime acts as: each Lambda stage's, SageMaker's, each site's."""
    return {
        *(function_role(stage.name) for stage in LAMBDA_STAGES),
        SAGEMAKER_ROLE,
        *(site_role(site) for site in sites),
    }


@dataclass(frozen=True)
class RoleSpec:
    """One role of the stack: its name and its permission policies (name → document)."""

    name: str
    policies: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Identities:
    """Credentials of the deployer and of every role, by role name."""

    deployer: Credentials
    roles: Mapping[str, Credentials] = field(default_factory=dict)

    def role(self, name: str) -> Credentials:
        try:
            return self.roles[name]
        except KeyError:
            known = ", ".join(sorted(self.roles)) or "none"
            raise PipelineError(f"no role {name!r} was created (known: {known})") from None


def _client(service: str, server: MotoServer, credentials: Credentials | None) -> Any:
    keys = credentials or Credentials(
        FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    )
    return boto3.session.Session(
        aws_access_key_id=keys.access_key_id,
        aws_secret_access_key=keys.secret_access_key,
        aws_session_token=keys.session_token,
        region_name=FAKE_CREDENTIALS["AWS_REGION"],
    ).client(service, endpoint_url=server.endpoint_url)  # type: ignore[call-overload]


def create_deployer(server: MotoServer) -> Credentials:
    """An IAM user allowed everything: what CloudFormation deploys with. Call after a reset."""
    if not server.iam:
        raise PipelineError("this moto server does not enforce IAM; start it with iam=True")
    server.allow_unauthenticated(_BOOTSTRAP_CALLS)
    iam = _client("iam", server, None)
    iam.create_user(UserName=DEPLOYER_USER)
    iam.put_user_policy(
        UserName=DEPLOYER_USER,
        PolicyName="deploy-everything",
        PolicyDocument=json.dumps(_DEPLOYER_POLICY),
    )
    key = iam.create_access_key(UserName=DEPLOYER_USER)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"], None, DEPLOYER_USER)


def create_roles(
    server: MotoServer, deployer: Credentials, specs: Iterable[RoleSpec]
) -> Identities:
    """Create each role with its policies (inline, verbatim) and assume it."""
    iam = _client("iam", server, deployer)
    sts = _client("sts", server, deployer)
    deployer_arn = iam.get_user(UserName=DEPLOYER_USER)["User"]["Arn"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": deployer_arn}, "Action": "sts:AssumeRole"}
        ],
    }
    roles: dict[str, Credentials] = {}
    for spec in specs:
        role_arn = iam.create_role(RoleName=spec.name, AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"
        ]["Arn"]
        for policy_name, document in spec.policies.items():
            iam.put_role_policy(
                RoleName=spec.name, PolicyName=policy_name, PolicyDocument=json.dumps(document)
            )
        assumed = sts.assume_role(RoleArn=role_arn, RoleSessionName=f"local-{spec.name}")[
            "Credentials"
        ]
        roles[spec.name] = Credentials(
            assumed["AccessKeyId"], assumed["SecretAccessKey"], assumed["SessionToken"], spec.name
        )
    return Identities(deployer=deployer, roles=roles)
