"""Build the forwarder service from a config, with a list-backed intake standing in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_forwarder.cli import build_service
from edge_forwarder.config import ForwarderConfig, load_config
from edge_forwarder.service import ForwarderService


def service_from_config(path: Path, intake: Any) -> tuple[ForwarderService, ForwarderConfig]:
    """The service exactly as `edge-forwarder run` wires it, but fed by `intake`."""
    config = load_config(path)
    config.crosswalk.path.parent.mkdir(parents=True, exist_ok=True)
    service, _intake, _parts = build_service(config, intake=intake, max_backoff_s=0.2)
    return service, config
