"""The one loader of the sample events in `events/`, with placeholders filled."""

from __future__ import annotations

import json
from pathlib import Path
from string import Template
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
DEFAULTS = {
    "site": "site-a",
    "pseudo_study_uid": "2.25.160097383917458122307853118291457302531",
    "run_id": "run-0001",
    "bucket": "imaging-ai-data",
    "etag": "9dd4e461268c8034f5c8564e155c67a6",
}


def load_event(name: str, **overrides: str) -> dict[str, Any]:
    """Load `events/{name}.json`, replacing `${placeholder}`s (defaults above) everywhere."""
    text = (EVENTS_DIR / f"{name.removesuffix('.json')}.json").read_text()
    values = {**DEFAULTS, **overrides}
    for value in values.values():
        if '"' in value or "\\" in value:
            raise ValueError("placeholder values must not need JSON escaping")
    document: dict[str, Any] = json.loads(Template(text).substitute(values))
    return document
