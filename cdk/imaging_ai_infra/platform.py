"""What every pipeline construct builds on: the stage, its network, the data bucket, keys, table."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3

from imaging_ai_infra.config import StageConfig
from imaging_ai_infra.network import Network


@dataclass(frozen=True)
class Platform:
    """Built once by the stack; ingest, inference, results and each function take it whole."""

    config: StageConfig
    network: Network
    data_bucket: s3.IBucket
    data_key: kms.IKey
    audit_key: kms.IKey
    state_table: dynamodb.ITable

    def function_environment(self, **extra: str) -> dict[str, str]:
        """What every function reads (functions/common/settings.py CommonSettings), and `extra`."""
        return {
            "DATA_BUCKET": self.data_bucket.bucket_name,
            "STATE_TABLE": self.state_table.table_name,
            "KMS_KEY_ARN": self.data_key.key_arn,
            **extra,
        }
