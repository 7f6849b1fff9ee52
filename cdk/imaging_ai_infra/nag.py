"""cdk-nag 3.x registration, and the one way this project acknowledges a nag or checkov finding."""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks
from constructs import IConstruct

_PACKS = ("AwsSolutions", "HIPAA.Security")
# Action families CDK's grant_read / grant_put / grant_encrypt_decrypt emit, always on named
# resources (one bucket's prefix, one key).
GRANT_READ_ACTIONS = ("s3:GetBucket*", "s3:GetObject*", "s3:List*")
GRANT_PUT_ACTIONS = ("s3:Abort*",)
GRANT_KEY_ACTIONS = ("kms:GenerateDataKey*", "kms:ReEncrypt*")

_INLINE_REASON = (
    "This inline policy is the role's CDK default policy, built from grant_* calls scoped to"
    " named resources of this stack; it belongs to exactly one role and changes with it, so a"
    " separately versioned managed policy would add nothing."
)


def register_nag_packs(scope: IConstruct) -> None:
    """Make synthesis fail (ValidationFailed) on any unacknowledged finding of both packs."""
    Validations.of(scope).add_plugins(
        HIPAASecurityChecks(verbose=True), AwsSolutionsChecks(verbose=True)
    )


def acknowledge(construct: IConstruct, reason: str, *rule_ids: str) -> None:
    """Acknowledge rules on `construct` (and its children) with a written reason.

    `rule_ids` are ids as cdk-nag prints them (`HIPAA.Security-LambdaDLQ`, or a granular
    `AwsSolutions-IAM5[Action::s3:GetObject*]`); the pack prefix Validations wants is added.
    """
    if len(reason) < 40:
        raise ValueError("an acknowledgement needs a real reason")
    for rule_id in rule_ids:
        pack = next((p for p in _PACKS if rule_id.startswith(f"{p}-")), None)
        if pack is None:
            raise ValueError(f"unknown nag pack in {rule_id!r}")
        Validations.of(construct).acknowledge(
            Acknowledgment(id=f"{pack}::{rule_id}", reason=reason)
        )


def iam5(*, actions: Iterable[str] = (), resources: Iterable[str] = ()) -> list[str]:
    """Granular AwsSolutions-IAM5 ids for exactly these wildcard actions and resources."""
    return [f"AwsSolutions-IAM5[Action::{a}]" for a in actions] + [
        f"AwsSolutions-IAM5[Resource::{r}]" for r in resources
    ]


def bucket_prefix_resources(bucket: s3.IBucket, prefixes: Iterable[str]) -> list[str]:
    """How cdk-nag spells `<bucket ARN>/<prefix>*` in an IAM5 finding."""
    return bucket_object_resources(bucket, [f"{prefix}*" for prefix in prefixes])


def bucket_object_resources(bucket: s3.IBucket, key_patterns: Iterable[str]) -> list[str]:
    """How cdk-nag spells `<bucket ARN>/<key pattern>` in an IAM5 finding."""
    child = bucket.node.default_child
    assert child is not None
    logical_id = Stack.of(bucket).get_logical_id(child)  # type: ignore[arg-type]
    return [f"<{logical_id}.Arn>/{pattern}" for pattern in key_patterns]


def acknowledge_default_policy(role: iam.Role, reason: str, wildcard_ids: list[str]) -> None:
    """Acknowledge a role's grant-built default policy: inline by construction, and the exact
    wildcard findings the grants produce (nothing broader)."""
    default_policy = role.node.try_find_child("DefaultPolicy")
    if default_policy is None:
        return
    acknowledge(default_policy, _INLINE_REASON, "HIPAA.Security-IAMNoInlinePolicy")
    if wildcard_ids:
        acknowledge(default_policy, reason, *wildcard_ids)


def checkov_skip(resource: IConstruct, reason: str, *check_ids: str) -> None:
    """Skip checkov checks on one CloudFormation resource, with the reason in its Metadata
    (checkov reads `Metadata.checkov.skip`); checks skipped everywhere live in .checkov.yaml."""
    if len(reason) < 40:
        raise ValueError("a checkov skip needs a real reason")
    cfn = resource if isinstance(resource, CfnResource) else resource.node.default_child
    if not isinstance(cfn, CfnResource):
        raise TypeError(f"{resource.node.path} has no CloudFormation resource to annotate")
    existing = cfn.get_metadata("checkov") or {"skip": []}
    existing["skip"] += [{"id": check_id, "comment": reason} for check_id in check_ids]
    cfn.add_metadata("checkov", existing)
