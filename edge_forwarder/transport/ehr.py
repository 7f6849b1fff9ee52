"""FHIR transaction POST to the EHR: retry on 5xx and network errors, OAuth2 client credentials."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from edge_forwarder.secret_files import read_private
from edge_forwarder.transport.errors import PermanentError, TransientError

FHIR_JSON = "application/fhir+json"


class EhrRejected(PermanentError):
    """A 4xx answer: not retried; the server's OperationOutcome is kept for the operator."""

    def __init__(self, status: int, outcome: dict[str, Any] | None) -> None:
        super().__init__(f"EHR answered HTTP {status}")
        self.status = status
        self.outcome = outcome


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenSource:
    """OAuth2 client-credentials token (SMART backend services), cached until shortly before expiry.

    With `private_key` the client authenticates by a signed RS384 JWT assertion (SMART
    backend services); with `client_secret` by HTTP Basic (plain client credentials).
    """

    token_url: str
    client_id: str
    scope: str
    client_secret: bytes | None = None
    private_key_pem: bytes | None = None
    key_id: str | None = None
    timeout_s: float = 30.0
    session: requests.Session | None = None

    def __post_init__(self) -> None:
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.requests_made = 0

    def _assertion(self) -> str:
        header = {"alg": "RS384", "typ": "JWT", **({"kid": self.key_id} if self.key_id else {})}
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        assert self.private_key_pem is not None
        key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise PermanentError("SMART backend services key must be RSA (RS384)")
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
        return f"{signing_input}.{_b64url(signature)}"

    def token(self) -> str:
        with self._lock:
            if self._token and time.monotonic() < self._expires_at:
                return self._token
            form = {"grant_type": "client_credentials", "scope": self.scope}
            auth: tuple[str, str] | None = None
            if self.private_key_pem is not None:
                form["client_assertion_type"] = (
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                )
                form["client_assertion"] = self._assertion()
            else:
                auth = (self.client_id, (self.client_secret or b"").decode())
            http = self.session or requests
            try:
                answer = http.post(self.token_url, data=form, auth=auth, timeout=self.timeout_s)
            except requests.RequestException as error:
                raise TransientError(
                    f"token endpoint unreachable: {type(error).__name__}"
                ) from None
            self.requests_made += 1
            if answer.status_code >= 500:
                raise TransientError(f"token endpoint answered HTTP {answer.status_code}")
            if answer.status_code != 200:
                raise PermanentError(f"token endpoint answered HTTP {answer.status_code}")
            body = answer.json()
            self._token = str(body["access_token"])
            # Renew a minute early so a token never expires between check and use.
            self._expires_at = time.monotonic() + max(0.0, float(body.get("expires_in", 300)) - 60)
            return self._token

    def forget(self) -> None:
        with self._lock:
            self._token = None


@dataclass
class EhrClient:
    base_url: str
    timeout_s: float = 30.0
    tokens: TokenSource | None = None
    session: requests.Session | None = None

    def post_transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle to the base URL; return the transaction-response Bundle."""
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if self.tokens is not None:
            headers["Authorization"] = f"Bearer {self.tokens.token()}"
        http = self.session or requests
        try:
            answer = http.post(
                self.base_url.rstrip("/") + "/",
                data=json.dumps(bundle),
                headers=headers,
                timeout=self.timeout_s,
            )
        except requests.RequestException as error:
            raise TransientError(f"EHR unreachable: {type(error).__name__}") from None
        if answer.status_code == 401 and self.tokens is not None:
            self.tokens.forget()  # expired or revoked early: fetch a new one on the retry
            raise TransientError("EHR answered HTTP 401; token renewed")
        if answer.status_code >= 500 or answer.status_code == 429:
            raise TransientError(f"EHR answered HTTP {answer.status_code}")
        if answer.status_code >= 400:
            outcome: dict[str, Any] | None
            try:
                outcome = answer.json()
            except ValueError:
                outcome = None
            raise EhrRejected(answer.status_code, outcome)
        try:
            return dict(answer.json())
        except ValueError:
            return {}


def token_source_from_files(
    token_url: str,
    client_id: str,
    scope: str,
    *,
    client_secret: bytes | None,
    private_key_file: Path | None,
    key_id: str | None,
) -> TokenSource:
    return TokenSource(
        token_url=token_url,
        client_id=client_id,
        scope=scope,
        client_secret=client_secret,
        private_key_pem=read_private(private_key_file) if private_key_file else None,
        key_id=key_id,
    )
