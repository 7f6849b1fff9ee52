"""A folder of DICOM as a user or a CD hands it over: what to send, what to skip, what identifies
the patient; and sending it by C-STORE with a context per (SOP class, transfer syntax)."""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory: an index, not an image
# DIMSE statuses a store may answer and still have stored the instance (PS3.4 B.2.3).
_STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
_MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255
# Attributes whose values identify the patient or the visit: the privacy audit searches for
# them in everything the cloud holds. Dates and sex are left out: too common to search for.
_IDENTIFYING = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "StationName",
    "DeviceSerialNumber",
)
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
_MIN_NEEDLE = 4  # shorter values match everywhere by chance


class SkipKind(StrEnum):
    DICOMDIR = "DICOMDIR"
    NOT_DICOM = "not DICOM"


@dataclass
class FolderSeries:
    """One series found in the folder; its fields stay on this machine (they hold PHI)."""

    series_instance_uid: str
    modality: str = ""
    series_number: str = ""
    body_part: str = ""
    description: str = ""
    files: list[Path] = field(default_factory=list)


@dataclass
class StudyFolder:
    instances: list[Path] = field(default_factory=list)
    skipped: dict[SkipKind, list[Path]] = field(default_factory=dict)
    series: dict[str, FolderSeries] = field(default_factory=dict)
    # (SOP class, transfer syntax) of the instances: the contexts a sender proposes.
    contexts: set[tuple[str, str]] = field(default_factory=set)
    identifiers: dict[str, str] = field(default_factory=dict)

    def skipped_counts(self) -> dict[str, int]:
        return {kind.value: len(paths) for kind, paths in self.skipped.items() if paths}


def scan_folder(folder: Path) -> StudyFolder:
    """Every file under `folder`: DICOM instances to send, DICOMDIRs and other files skipped."""
    found = StudyFolder()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError):
            found.skipped.setdefault(SkipKind.NOT_DICOM, []).append(path)
            continue
        meta = getattr(header, "file_meta", None)
        sop_class = str(header.get("SOPClassUID") or (meta and meta.get("MediaStorageSOPClassUID")))
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in header:
            found.skipped.setdefault(SkipKind.DICOMDIR, []).append(path)
            continue
        if not header.get("SOPInstanceUID") or meta is None or "TransferSyntaxUID" not in meta:
            found.skipped.setdefault(SkipKind.NOT_DICOM, []).append(path)
            continue
        found.instances.append(path)
        found.contexts.add((sop_class, str(meta.TransferSyntaxUID)))
        series_uid = str(header.get("SeriesInstanceUID", ""))
        series = found.series.get(series_uid)
        if series is None:
            series = found.series[series_uid] = FolderSeries(
                series_instance_uid=series_uid,
                modality=str(header.get("Modality", "")),
                series_number=str(header.get("SeriesNumber", "")),
                body_part=str(header.get("BodyPartExamined", "")),
                description=str(header.get("SeriesDescription", "")),
            )
            _collect_identifiers(header, found.identifiers)
        series.files.append(path)
    return found


def _collect_identifiers(header: Dataset, into: dict[str, str]) -> None:
    """The identifying values of one series' first header, keyed `Keyword` or `Keyword[i]`."""
    known = set(into.values())

    def add(name: str, value: str) -> None:
        value = value.strip()
        if len(value) >= _MIN_NEEDLE and value not in known:
            key, index = name, 1
            while key in into:
                index += 1
                key = f"{name}[{index}]"
            into[key] = value
            known.add(value)

    for keyword in (*_IDENTIFYING, *_UIDS, "SOPInstanceUID"):
        value = header.get(keyword)
        if value is None:
            continue
        for item in value if isinstance(value, MultiValue) else [value]:
            text = str(item)
            add(keyword, text)
            if keyword.endswith("Name") and "^" in text:
                for part in text.split("^"):
                    add(f"{keyword} component", part)


@dataclass
class SendReport:
    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # reason -> files

    @property
    def ok(self) -> bool:
        return not self.failed


def send_instances(
    found: StudyFolder, host: str, port: int, called_ae: str, calling_ae: str
) -> SendReport:
    """C-STORE every instance over one association, proposing exactly the (SOP class,
    transfer syntax) pairs the files have: compressed files go as they are, not transcoded."""
    from pynetdicom import AE  # the Lambdas import this library without pynetdicom

    report = SendReport()
    if not found.instances:
        return report
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, syntax in sorted(found.contexts)[:_MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        report.failed["association refused"] = len(found.instances)
        return report
    # Without TCP_NODELAY each C-STORE waits ~45 ms on the peer's delayed ACK (measured).
    transport = getattr(assoc.dul.socket, "socket", None)
    if transport is not None:
        transport.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for index, path in enumerate(found.instances):
            if not assoc.is_established:
                # The peer aborted (its idle timer, a restart): say so, do not raise mid-folder.
                report.failed["association aborted"] += len(found.instances) - index
                break
            try:
                status = assoc.send_c_store(pydicom.dcmread(path))
            except ValueError:  # no accepted context (more than 128 kinds, or refused)
                report.failed["no accepted presentation context"] += 1
                continue
            code = int(status.Status) if status and "Status" in status else -1
            if code in _STORED:
                report.sent += 1
            else:
                report.failed[f"status 0x{code & 0xFFFF:04X}"] += 1
    finally:
        assoc.release()
    return report
