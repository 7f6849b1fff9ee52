"""State: the run-state table, PITR and a CMK."""

from __future__ import annotations

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from constructs import Construct

from imaging_ai_infra.config import StageConfig
from imaging_ai_infra.nag import acknowledge
from imaging_ai_infra.names import (
    STATE_PARTITION_KEY,
    STATE_SORT_KEY,
    resource_prefix,
)


class State(Construct):
    """One item per (site, pseudo study, run), moved forward by conditional writes."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: StageConfig, data_key: kms.IKey
    ) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "StateTable",
            table_name=f"{resource_prefix(config.stage)}-state",
            partition_key=dynamodb.Attribute(
                name=STATE_PARTITION_KEY, type=dynamodb.AttributeType.STRING
            ),
            sort_key=dynamodb.Attribute(name=STATE_SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=data_key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=config.is_prod,
            removal_policy=config.removal_policy,
        )
        acknowledge(
            self.table,
            "Point-in-time recovery gives continuous backups with 35-day restore; an AWS Backup"
            " plan (cross-account vault, longer retention) is an organisation-level choice listed"
            " in docs/deploy.md's shared-responsibility table.",
            "HIPAA.Security-DynamoDBInBackupPlan",
        )
