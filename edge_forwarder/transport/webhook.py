"""A site's webhook for critical-finding notices: one JSON POST, errors sorted for retry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from edge_forwarder.transport.errors import PermanentError, TransientError


@dataclass(frozen=True)
class WebhookClient:
    """POSTs the notice (a FHIR Communication) as JSON; 2xx is delivered."""

    url: str
    timeout_s: float = 10.0

    @property
    def destination(self) -> str:
        return "webhook"

    def notify(self, communication: dict[str, Any]) -> None:
        try:
            answer = requests.post(
                self.url,
                data=json.dumps(communication),
                headers={"Content-Type": "application/fhir+json"},
                timeout=self.timeout_s,
            )
        except requests.RequestException as error:
            raise TransientError(f"webhook unreachable: {type(error).__name__}") from None
        if answer.status_code >= 500 or answer.status_code == 429:
            raise TransientError(f"webhook answered HTTP {answer.status_code}")
        if answer.status_code >= 300:
            raise PermanentError(f"webhook answered HTTP {answer.status_code}")
