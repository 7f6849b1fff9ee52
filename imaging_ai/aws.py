"""boto3 client factory: one place that honours AWS_ENDPOINT_URL (moto, LocalStack or AWS).

Clients use the default credential chain, unless the calling thread acts as another identity
(`acting_as`): the local runtime runs each Lambda handler under its own function role and the
local async endpoint under the SageMaker execution role, all in one process, as AWS would run
them in separate ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

# Adaptive retries back off with jitter when S3 or SQS is briefly unreachable.
_CONFIG = Config(
    retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=5, read_timeout=60
)


@dataclass(frozen=True)
class Credentials:
    """Temporary credentials of one principal (an assumed role, or a user's access key)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    principal: str = ""  # the role or user name, for error messages and logs

    def environment(self) -> dict[str, str]:
        """Variables that make a child process (or the default chain) use these credentials."""
        variables = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token:
            variables["AWS_SESSION_TOKEN"] = self.session_token
        return variables


# Context variables do not follow new threads: a thread that must act as someone says so.
_ACTING_AS: ContextVar[Credentials | None] = ContextVar("imaging_ai_acting_as", default=None)


@contextmanager
def acting_as(credentials: Credentials | None) -> Iterator[None]:
    """Make `client()` (and the envelope's KMS calls) in this thread use `credentials`."""
    token = _ACTING_AS.set(credentials)
    try:
        yield
    finally:
        _ACTING_AS.reset(token)


def current_credentials() -> Credentials | None:
    """The identity this thread acts as; None means the default credential chain."""
    return _ACTING_AS.get()


def session() -> boto3.session.Session:
    """A boto3 session for the identity this thread acts as."""
    credentials = _ACTING_AS.get()
    if credentials is None:
        return boto3.session.Session()
    return boto3.session.Session(
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
    )


def client(service: str) -> Any:
    """A cached boto3 client; botocore reads AWS_ENDPOINT_URL and the credential chain itself."""
    return _client(service, _ACTING_AS.get())


@cache
def _client(service: str, credentials: Credentials | None) -> Any:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    with acting_as(credentials):
        return session().client(service, region_name=region, config=_CONFIG)  # type: ignore[call-overload]


def reset_clients() -> None:
    """Forget cached clients (tests change the endpoint between servers)."""
    _client.cache_clear()
