"""Intake settings: the SCP endpoint, spool, completion timers, expected series and routing."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imaging_ai.contracts import MODEL_NAME_PATTERN, Priority


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        re.compile(value)
    return value


class SeriesMatch(_Model):
    """Criteria on one series; every criterion given must hold (regexes are case-insensitive)."""

    modality: list[str] | None = None
    sop_class_uids: list[str] | None = None
    body_part: list[str] | None = None
    series_description: str | None = None  # regex, searched
    # Any other top-level attribute by keyword -> regex, e.g. {"Manufacturer": "SIEMENS"}.
    tags: dict[str, str] = Field(default_factory=dict)
    min_instances: int = Field(default=1, ge=1)

    _regex = field_validator("series_description")(_check_regex)

    @field_validator("tags")
    @classmethod
    def _tag_regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            re.compile(pattern)
        return value


def _priority_in_any_case(value: Any) -> Any:
    # The config file says "stat" or "STAT"; the contract's enum spells it one way.
    return value.upper() if isinstance(value, str) else value


class RoutingRule(SeriesMatch):
    """A study goes to every model of every rule one of its series matches (fan-out).

    A rule names one model (`model = "x"`) or several (`models = ["x", "y"]`); each model
    gets its own run of the study.
    """

    models: list[Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]] = Field(min_length=1)
    # "stat": every study this rule routes goes first at every stage (e.g. a rule for the
    # emergency department's scanner). Routine studies still turn STAT when their own
    # Requested Procedure Priority says so (routing.study_priority).
    priority: Priority = Priority.ROUTINE
    # A site that has checked its secondary captures / ultrasound lets them through here.
    allow_burned_in_risk_sop_classes: list[str] = Field(default_factory=list)

    _priority = field_validator("priority", mode="before")(_priority_in_any_case)

    @model_validator(mode="before")
    @classmethod
    def _one_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            if "models" in data:
                raise ValueError("a routing rule gives `model` or `models`, not both")
            data = {**data, "models": [data["model"]]}
            del data["model"]
        return data

    @field_validator("models")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a routing rule names each model once")
        return value


class ExpectedSeriesRule(SeriesMatch):
    """A series a study should contain before it is complete (e.g. the thin CT series)."""

    name: str = Field(pattern=r"^[A-Za-z0-9 _.-]{1,64}$")  # logged: keep it free of PHI


class SenderRule(_Model):
    """One modality or PACS allowed to store: its calling AE title AND one of its addresses."""

    name: str = Field(pattern=r"^[A-Za-z0-9 _.-]{1,64}$")  # logged and audited: no PHI
    ae_title: str = Field(min_length=1, max_length=16)
    # IP addresses or networks ("10.1.2.3", "10.1.2.0/28", "::1").
    addresses: list[str] = Field(min_length=1)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable() or "\\" in value:
            raise ValueError("an AE title is 1-16 printable characters without backslash")
        return value

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {item!r}") from None
        return value

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.addresses]


class IntakeSettings(_Model):
    ae_title: str = Field(default="EDGE_FWD", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)  # 0 picks a free port (tests)
    # Default deny: only these senders may open an association (see docs/edge-forwarder.md).
    senders: list[SenderRule] = Field(default_factory=list)
    # Accept any calling AE title from any address: only for a closed test network. The
    # forwarder logs a warning at every start while it is set.
    allow_any_sender: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # When set, peers must present a certificate signed by it (mutual TLS, recommended).
    # TLS without it encrypts but does not authenticate the sender; the forwarder says so.
    tls_ca: Path | None = None
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    # Idle timeout: an association with no complete PDU for this long is aborted, and one
    # PDU must arrive whole within it, so a trickling peer cannot hold a slot.
    network_timeout_s: float = Field(default=60.0, gt=0)
    # The largest P-DATA PDU we accept (and announce); bigger PDUs end the association.
    maximum_pdu_size: int = Field(default=131072, ge=4096, le=4 * 1024**2)
    # Slots: all associations at once, and per sender (so one sender cannot fill them all).
    max_associations: int = Field(default=32, ge=1, le=1024)
    max_associations_per_sender: int = Field(default=4, ge=1, le=1024)
    spool_dir: Path
    quiet_seconds_study: float = Field(default=60.0, ge=0)
    quiet_seconds_series: float = Field(default=30.0, ge=0)
    expected_series: list[ExpectedSeriesRule] = Field(default_factory=list)
    # After the quiet timer, how long to keep waiting for expected series before going on.
    expected_series_max_wait_seconds: float = Field(default=600.0, ge=0)
    routing: list[RoutingRule] = Field(
        default_factory=lambda: [RoutingRule(models=["lung-nodule-demo"], modality=["CT"])]
    )
    # Enforced while receiving, and on the inflated size of a deflated data set.
    max_instance_bytes: int = Field(default=2 * 1024**3, gt=0)
    min_free_disk_bytes: int = Field(default=1024**3, ge=0)
    quarantine_burned_in: bool = True

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "allowed_calling_aets" in data:
            raise ValueError(
                "allowed_calling_aets was replaced by [[intake.senders]] entries that name "
                "each sender's calling AE title and addresses"
            )
        return data

    @model_validator(mode="after")
    def _who_may_send(self) -> IntakeSettings:
        if not self.senders and not self.allow_any_sender:
            raise ValueError(
                "no sender may store: add [[intake.senders]] entries (name, ae_title, "
                "addresses), or set allow_any_sender = true to accept any host (unsafe)"
            )
        names = [sender.name for sender in self.senders]
        if len(set(names)) != len(names):
            raise ValueError("sender names must be unique")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key (the SCP's own certificate)")
        return self
