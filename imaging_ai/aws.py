"""boto3 client factory: one place that honours AWS_ENDPOINT_URL (moto, LocalStack or AWS)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

# Adaptive retries back off with jitter when S3 or SQS is briefly unreachable.
_CONFIG = Config(
    retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=5, read_timeout=60
)


@cache
def client(service: str) -> Any:
    """A cached boto3 client; botocore reads AWS_ENDPOINT_URL and the credential chain itself."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client(service, region_name=region, config=_CONFIG)  # type: ignore[call-overload]


def reset_clients() -> None:
    """Forget cached clients (tests change the endpoint between servers)."""
    client.cache_clear()
