"""OAuth2 client credentials: token cached until expiry, RS384 assertion, 4xx vs 5xx."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from edge_forwarder.transport.ehr import EhrClient, EhrRejected, TokenSource
from edge_forwarder.transport.errors import TransientError


@dataclass
class Answer:
    status_code: int
    body: dict[str, Any]

    def json(self) -> dict[str, Any]:
        return self.body


@dataclass
class ScriptedHttp:
    """Stands in for requests: unit tests run with the network off."""

    answers: list[Answer]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def post(self, url: str, **kwargs: Any) -> Answer:
        self.calls.append({"url": url, **kwargs})
        return self.answers.pop(0)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_token_is_cached_until_expiry_and_assertion_verifies() -> None:
    # Given a SMART backend-services client with an RSA key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    http = ScriptedHttp([Answer(200, {"access_token": "t1", "expires_in": 3600})])
    tokens = TokenSource(
        "https://ehr/token", "fwd", "system/*.write", private_key_pem=pem, session=http
    )  # type: ignore[arg-type]
    # When two requests need a token
    assert tokens.token() == "t1" and tokens.token() == "t1"
    # Then the token endpoint was asked once, with a JWT signed RS384 for the token URL
    assert len(http.calls) == 1
    form = http.calls[0]["data"]
    assert form["grant_type"] == "client_credentials"
    header, claims, signature = form["client_assertion"].split(".")
    assert json.loads(_b64(header))["alg"] == "RS384"
    assert json.loads(_b64(claims))["aud"] == "https://ehr/token"
    key.public_key().verify(
        _b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA384()
    )


def test_expired_token_is_renewed() -> None:
    http = ScriptedHttp(
        [
            Answer(200, {"access_token": "t1", "expires_in": 30}),
            Answer(200, {"access_token": "t2", "expires_in": 3600}),
        ]
    )
    tokens = TokenSource("https://ehr/token", "fwd", "s", client_secret=b"pw", session=http)  # type: ignore[arg-type]
    # expires_in under the one-minute safety margin: already stale on the next call
    assert tokens.token() == "t1"
    assert tokens.token() == "t2"
    assert http.calls[0]["auth"] == ("fwd", "pw")


def test_ehr_statuses_map_to_retry_or_reject() -> None:
    http = ScriptedHttp([Answer(503, {}), Answer(409, {"resourceType": "OperationOutcome"})])
    ehr = EhrClient("https://ehr/fhir", session=http)  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        ehr.post_transaction({"resourceType": "Bundle"})
    with pytest.raises(EhrRejected) as rejected:
        ehr.post_transaction({"resourceType": "Bundle"})
    assert rejected.value.status == 409
    assert rejected.value.outcome == {"resourceType": "OperationOutcome"}
