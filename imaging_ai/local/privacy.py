"""Privacy audit of the cloud side: does any known PHI value appear in any stored object?"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from imaging_ai import envelope
from imaging_ai.aws import client
from imaging_ai.contracts import encryption_context
from imaging_ai.errors import PipelineError


@dataclass(frozen=True)
class Leak:
    """Where a PHI value was found; names the PHI field, never repeats its value."""

    key: str
    member: str
    phi_field: str


@dataclass
class PrivacyReport:
    objects_scanned: int = 0
    bytes_scanned: int = 0
    undecryptable: list[str] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.leaks and not self.undecryptable


def _needles(phi: Mapping[str, str]) -> dict[str, list[bytes]]:
    """Each PHI value in the byte forms it could take in DICOM, JSON or text (case-folded)."""
    needles: dict[str, list[bytes]] = {}
    for name, value in phi.items():
        forms = {value, value.replace("^", " "), value.replace("^", ", ")}
        needles[name] = [form.lower().encode() for form in forms if len(form) >= 4]
    return needles


def _members(name: str, payload: bytes) -> Iterator[tuple[str, bytes]]:
    """The object itself, and what is inside it when it is a tar or a zip (npz) archive."""
    yield name, payload
    if payload[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                for info in archive.infolist():
                    yield f"{name}!{info.filename}", archive.read(info)
        except zipfile.BadZipFile:
            pass
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as archive:
            for member in archive.getmembers():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    yield f"{name}!{member.name}", extracted.read()
    except tarfile.TarError:
        pass


def _context_for(key: str) -> dict[str, str]:
    """incoming/, results/, preprocessed/ ... keys all carry {site}/{pseudo_study_uid} next."""
    parts = key.split("/")
    if len(parts) < 3:
        raise PipelineError("object key does not name a site and a study")
    return encryption_context(parts[1], parts[2])


def audit_bucket(bucket: str, key_arn: str, phi: Mapping[str, str]) -> PrivacyReport:
    """Decrypt every `.enc` object, open archives, and search every byte for the PHI values."""
    report = PrivacyReport()
    needles = _needles(phi)
    s3 = client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            key = item["Key"]
            payload = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            report.objects_scanned += 1
            _search(report, key, "key", key.lower().encode(), needles)
            if key.endswith(".enc"):
                try:
                    payload = envelope.decrypt_bytes(payload, key_arn, _context_for(key))
                except Exception:  # any decrypt failure is itself a finding to report
                    report.undecryptable.append(key)
                    continue
            for member, content in _members(key, payload):
                report.bytes_scanned += len(content)
                _search(report, key, member, content.lower(), needles)
    return report


def audit_table(table: str, phi: Mapping[str, str]) -> PrivacyReport:
    """Search every item of a DynamoDB table (the run state) for the PHI values."""
    report = PrivacyReport()
    needles = _needles(phi)
    dynamodb = client("dynamodb")
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page.get("Items", []):
            report.objects_scanned += 1
            text = repr(item).lower().encode()
            report.bytes_scanned += len(text)
            _search(report, f"dynamodb:{table}", "item", text, needles)
    return report


def _search(
    report: PrivacyReport, key: str, member: str, haystack: bytes, needles: dict[str, list[bytes]]
) -> None:
    for name, forms in needles.items():
        if any(form in haystack for form in forms):
            report.leaks.append(Leak(key=key, member=member, phi_field=name))
