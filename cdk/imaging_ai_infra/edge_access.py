"""Edge access: IAM Roles Anywhere for the on-prem forwarders, one least-privilege role per site."""

from __future__ import annotations

from aws_cdk import CfnParameter, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_rolesanywhere as rolesanywhere
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from imaging_ai_infra.nag import acknowledge, bucket_prefix_resources, iam5
from imaging_ai_infra.names import INCOMING_PREFIX, RESULTS_PREFIX, resource_prefix
from imaging_ai_infra.platform import Platform

ROLES_ANYWHERE_PRINCIPAL = "rolesanywhere.amazonaws.com"
SESSION_DURATION = Duration.hours(1)


class EdgeAccess(Construct):
    """A forwarder presents an X.509 certificate (CN = its site code) issued by its hospital's
    CA; Roles Anywhere trades it for short-lived credentials of that site's role only.

    Each site has a trust anchor of its own holding only its own CA, and its role trusts
    that anchor alone: hospital A's CA issuing `CN=site-b` gets nothing."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        platform: Platform,
        site_queues: dict[str, sqs.IQueue],
    ) -> None:
        super().__init__(scope, construct_id)
        config, data_bucket, data_key = platform.config, platform.data_bucket, platform.data_key
        prefix = resource_prefix(config.stage)
        # One trust anchor per site, holding only that site's CA: a role trusts its own
        # anchor only, so a hospital's CA can never mint a certificate another site's role
        # accepts, whatever CN it writes (the CN condition alone would let it).
        self.trust_anchors: dict[str, rolesanywhere.CfnTrustAnchor] = {}
        self.site_roles: dict[str, iam.Role] = {}
        for site, queue in site_queues.items():
            anchor = self._trust_anchor(site, prefix, config.edge_ca_certificate_pems.get(site))
            self.trust_anchors[site] = anchor
            self.site_roles[site] = self._site_role(site, anchor, data_bucket, data_key, queue)

        self.profile = rolesanywhere.CfnProfile(
            self,
            "Profile",
            name=f"{prefix}-edge-forwarders",
            enabled=True,
            role_arns=[role.role_arn for role in self.site_roles.values()],
            duration_seconds=SESSION_DURATION.to_seconds(),
        )

    def _trust_anchor(
        self, site: str, prefix: str, ca_pem: str | None
    ) -> rolesanywhere.CfnTrustAnchor:
        if ca_pem is None:
            ca_pem = CfnParameter(
                Stack.of(self),
                f"EdgeCaCertificatePem{_camel(site)}",
                type="String",
                no_echo=False,
                description=(
                    f"PEM of the CA that issues {site}'s edge-forwarder certificates, and no other"
                    " site's (or set context edge_ca_certificate_files at synth time)"
                ),
                min_length=1,
            ).value_as_string
        return rolesanywhere.CfnTrustAnchor(
            self,
            f"TrustAnchor-{site}",
            name=f"{prefix}-edge-ca-{site}",
            enabled=True,
            source=rolesanywhere.CfnTrustAnchor.SourceProperty(
                source_type="CERTIFICATE_BUNDLE",
                source_data=rolesanywhere.CfnTrustAnchor.SourceDataProperty(
                    x509_certificate_data=ca_pem
                ),
            ),
        )

    def _site_role(
        self,
        site: str,
        anchor: rolesanywhere.CfnTrustAnchor,
        data_bucket: s3.IBucket,
        data_key: kms.IKey,
        queue: sqs.IQueue,
    ) -> iam.Role:
        stack = Stack.of(self)
        incoming = f"{INCOMING_PREFIX}{site}/"
        results = f"{RESULTS_PREFIX}{site}/"
        role = iam.Role(
            self,
            f"SiteRole-{site}",
            description=f"Edge forwarder of {site}: its own upload and result prefixes only",
            max_session_duration=SESSION_DURATION,
            assumed_by=iam.PrincipalWithConditions(
                iam.ServicePrincipal(ROLES_ANYWHERE_PRINCIPAL),
                {
                    # Only certificates from this site's own anchor, and only this site's CN.
                    "ArnEquals": {"aws:SourceArn": anchor.attr_trust_anchor_arn},
                    "StringEquals": {"aws:PrincipalTag/x509Subject/CN": site},
                },
            ),
        )
        role.assume_role_policy.add_statements(  # type: ignore[union-attr]
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal(ROLES_ANYWHERE_PRINCIPAL)],
                actions=["sts:TagSession", "sts:SetSourceIdentity"],
                conditions={"ArnEquals": {"aws:SourceArn": anchor.attr_trust_anchor_arn}},
            )
        )
        object_arn = data_bucket.arn_for_objects
        statements = [
            iam.PolicyStatement(
                sid="UploadOwnStudies",
                actions=["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                resources=[object_arn(f"{incoming}*")],
            ),
            iam.PolicyStatement(
                sid="FetchOwnResults",
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[object_arn(f"{results}*")],
            ),
            iam.PolicyStatement(
                sid="ListOwnPrefixes",
                actions=["s3:ListBucket", "s3:ListBucketMultipartUploads"],
                resources=[data_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{incoming}*", f"{results}*"]}},
            ),
            iam.PolicyStatement(
                sid="PollOwnResultsQueue",
                actions=[
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                ],
                resources=[queue.queue_arn],
            ),
            # Envelope encryption (AWS Encryption SDK): the context names the site.
            iam.PolicyStatement(
                sid="EnvelopeKeysForOwnSite",
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[data_key.key_arn],
                conditions={"StringEquals": {"kms:EncryptionContext:site": site}},
            ),
            # SSE-KMS of its own objects (S3 puts the object ARN in the context).
            iam.PolicyStatement(
                sid="BucketEncryptionForOwnPrefixes",
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=[data_key.key_arn],
                conditions={
                    "StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"},
                    "StringLike": {
                        "kms:EncryptionContext:aws:s3:arn": [
                            object_arn(f"{incoming}*"),
                            object_arn(f"{results}*"),
                        ]
                    },
                },
            ),
            # SSE of its own results queue (SQS puts the queue ARN in the context).
            iam.PolicyStatement(
                sid="QueueEncryptionForOwnQueue",
                actions=["kms:Decrypt"],
                resources=[data_key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"sqs.{stack.region}.amazonaws.com",
                        "kms:EncryptionContext:aws:sqs:arn": queue.queue_arn,
                    }
                },
            ),
        ]
        policy = iam.ManagedPolicy(self, f"SitePolicy-{site}", statements=statements, roles=[role])
        acknowledge(
            policy,
            f"Wildcards are object keys under {incoming} and {results} only (the site's own"
            " studies and results); every other statement names one queue or one key with a"
            " site-pinned encryption-context condition.",
            *iam5(resources=bucket_prefix_resources(data_bucket, [incoming, results])),
        )
        return role


def _camel(site: str) -> str:
    """`site-a` -> `SiteA`: CloudFormation logical IDs are alphanumeric."""
    return "".join(part.capitalize() for part in site.split("-"))
