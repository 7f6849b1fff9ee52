"""Who may open an association: the sender allow-list and the per-sender slot limits."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from edge_forwarder.intake.settings import IntakeSettings


class Refusal(Enum):
    """Why an association request is rejected; the value is the logged reason."""

    UNKNOWN_ADDRESS = "unknown_address"
    UNKNOWN_SENDER = "unknown_sender"
    WRONG_CALLED_AE = "wrong_called_ae_title"
    SENDER_BUSY = "sender_association_limit"
    SERVER_BUSY = "association_limit"

    @property
    def reject(self) -> tuple[int, int, int]:
        """A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4."""
        if self is Refusal.UNKNOWN_SENDER or self is Refusal.UNKNOWN_ADDRESS:
            return (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
        if self is Refusal.WRONG_CALLED_AE:
            return (0x01, 0x01, 0x07)  # permanent, service user, called AE not recognised
        return (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit


@dataclass(frozen=True)
class Admission:
    sender: str | None  # the allow-list entry's name (or "any") when admitted
    refusal: Refusal | None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class SenderPolicy:
    """Default deny: a sender is admitted when its calling AE title AND address match an entry."""

    def __init__(self, settings: IntakeSettings) -> None:
        self._called = settings.ae_title.strip()
        self._any = settings.allow_any_sender
        self._rules = [(rule.name, rule.ae_title, rule.networks()) for rule in settings.senders]
        self._per_sender = settings.max_associations_per_sender
        self._total = settings.max_associations

    def address_known(self, address: str) -> bool:
        """Checked at connect time, before any TLS or DICOM: unknown hosts are dropped at once."""
        if self._any:
            return True
        ip = _address(address)
        return ip is not None and any(ip in net for _, _, nets in self._rules for net in nets)

    def sender_of(self, calling_ae: str, address: str) -> str | None:
        ip = _address(address)
        calling = calling_ae.strip()
        for name, ae_title, networks in self._rules:
            if calling == ae_title and ip is not None and any(ip in net for net in networks):
                return name
        if self._any:
            # One slot group per calling AE title and address; AE titles and IPs are no PHI.
            return f"any:{calling}@{ip}"
        return None

    def admit(
        self, calling_ae: str, called_ae: str, address: str, established: Iterable[str]
    ) -> Admission:
        """Decide one A-ASSOCIATE-RQ; `established` names the sender of every live association."""
        sender = self.sender_of(calling_ae, address)
        if sender is None:
            return Admission(None, Refusal.UNKNOWN_SENDER)
        if called_ae.strip() != self._called:
            return Admission(sender, Refusal.WRONG_CALLED_AE)
        live = list(established)
        if len(live) >= self._total:
            return Admission(sender, Refusal.SERVER_BUSY)
        if live.count(sender) >= self._per_sender:
            return Admission(sender, Refusal.SENDER_BUSY)
        return Admission(sender, None)
