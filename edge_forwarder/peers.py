"""The hospital systems the edge delivers to, as the delivery code sees them (Protocols, so the
delivery and the critical notifier take any adapter, and tests take fakes)."""

from __future__ import annotations

from typing import Any, Protocol


class Pacs(Protocol):
    """The hospital PACS (`transport.pacs.PacsPeer`)."""

    @property
    def ae_title(self) -> str: ...
    def store(self, objects: list[bytes]) -> list[int]: ...


class Hl7(Protocol):
    """The HL7 v2 interface engine (`transport.hl7.MllpPeer`)."""

    def send(self, message: str, control_id: str) -> object: ...


class Ehr(Protocol):
    """The hospital EHR's FHIR endpoint (`transport.ehr.EhrClient`)."""

    def post_transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...
