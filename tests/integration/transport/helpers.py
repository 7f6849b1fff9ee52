"""Build the forwarder from a config, with a list-backed intake standing in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_forwarder.composition import Forwarder, build_forwarder
from edge_forwarder.config import ForwarderConfig, load_config


def forwarder_from_config(path: Path, intake: Any) -> tuple[Forwarder, ForwarderConfig]:
    """The forwarder exactly as `edge-forwarder run` builds it, but fed by `intake`."""
    config = load_config(path)
    config.crosswalk.path.parent.mkdir(parents=True, exist_ok=True)
    return build_forwarder(config, intake=intake, max_backoff_s=0.2), config
