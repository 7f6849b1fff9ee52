"""Intake settings: the SCP endpoint, spool, completion timers, expected series and routing."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class RoutingRule(SeriesMatch):
    """A study goes to `model` when at least one of its series matches; first rule wins."""

    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # A site that has checked its secondary captures / ultrasound lets them through here.
    allow_burned_in_risk_sop_classes: list[str] = Field(default_factory=list)


class ExpectedSeriesRule(SeriesMatch):
    """A series a study should contain before it is complete (e.g. the thin CT series)."""

    name: str = Field(pattern=r"^[A-Za-z0-9 _.-]{1,64}$")  # logged: keep it free of PHI


class IntakeSettings(_Model):
    ae_title: str = Field(default="EDGE_FWD", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)  # 0 picks a free port (tests)
    allowed_calling_aets: list[str] | None = None  # None accepts any calling AE title
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # when set, peers must present a certificate signed by it
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=120.0, gt=0)
    maximum_pdu_size: int = Field(default=0, ge=0)  # 0: unlimited
    spool_dir: Path
    quiet_seconds_study: float = Field(default=60.0, ge=0)
    quiet_seconds_series: float = Field(default=30.0, ge=0)
    expected_series: list[ExpectedSeriesRule] = Field(default_factory=list)
    # After the quiet timer, how long to keep waiting for expected series before going on.
    expected_series_max_wait_seconds: float = Field(default=600.0, ge=0)
    routing: list[RoutingRule] = Field(
        default_factory=lambda: [RoutingRule(model="lung-nodule-demo", modality=["CT"])]
    )
    max_instance_bytes: int = Field(default=2 * 1024**3, gt=0)
    min_free_disk_bytes: int = Field(default=1024**3, ge=0)
    quarantine_burned_in: bool = True

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not 0 < len(v) <= 16 for v in value):
            raise ValueError("AE titles are 1-16 characters")
        return value
