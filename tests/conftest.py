"""Fixtures shared by every test tier: a moto server on loopback and AWS environment isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imaging_ai import envelope
from imaging_ai.aws import reset_clients
from imaging_ai.local.moto_server import MotoServer, start_moto_server

_TIERS = ("unit", "integration", "infrastructure", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier (the folder under tests/ it lives in), so `-m unit`,
    `-m "not e2e"` and the Makefile's tier targets select exactly that tier."""
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        if parts and parts[0] in _TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def moto_session_server() -> Iterator[MotoServer]:
    """One moto server process on 127.0.0.1 for the whole session."""
    server = start_moto_server()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_session_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """Point every boto3 client at the moto server, with a clean slate of resources."""
    for name, value in moto_session_server.environment().items():
        monkeypatch.setenv(name, value)
    import requests

    requests.post(f"{moto_session_server.endpoint_url}/moto-api/reset", timeout=10)
    reset_clients()
    envelope.reset_providers()
    yield moto_session_server
    reset_clients()
    envelope.reset_providers()
