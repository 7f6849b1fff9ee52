"""The intake service: a C-STORE SCP over a durable spool, with study completion and routing."""

from __future__ import annotations

import filecmp
import os
import sqlite3
import ssl
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge_forwarder.intake.admission import SenderPolicy
from edge_forwarder.intake.association import IntakeServer, start_intake_server
from edge_forwarder.intake.commit import GroupCommit
from edge_forwarder.intake.header import HeaderError, read_header, tags_for
from edge_forwarder.intake.journal import Journal, JournalBatch
from edge_forwarder.intake.routing import (
    choose_models,
    rule_attributes,
    series_matches,
    study_priority,
)
from edge_forwarder.intake.settings import IntakeSettings
from edge_forwarder.intake.spool import IncomingFile, Spool, fsync_directory, part10_prefix
from imaging_ai.contracts import Priority
from imaging_ai.dicom_policy import (
    ACCEPTED_TRANSFER_SYNTAXES,
    BURNED_IN_RISK_SOP_CLASSES,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    REQUIRED_ATTRIBUTES,
    UNCOMPRESSED_LITTLE_ENDIAN,
    burned_in_risk,
)
from imaging_ai.logs import get_logger
from imaging_ai.model_registry import split_model_reference

# Keyword fields, as the forwarder logs: its JSON formatter prints the allow-listed ones.
log = get_logger("edge_forwarder.intake")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110

# Images, SR and SEG go to models; SC and US are accepted only to be quarantined.
STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    *sorted(BURNED_IN_RISK_SOP_CLASSES),
)
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_EXPLICIT_LE = EXPLICIT_VR_LITTLE_ENDIAN
_DEFLATED = DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
_BIG_ENDIAN = EXPLICIT_VR_BIG_ENDIAN
_REQUIRED = REQUIRED_ATTRIBUTES
# Read for the burned-in and pixel data length checks.
_CHECKED = (
    "BurnedInAnnotation", "NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated"
)  # fmt: skip
# Values above this stay on disk while the header is read; attributes we read are tiny.
_DEFER_BYTES = 64 * 1024
_INFLATE_CHUNK = 1024 * 1024
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Read for the burned-in and pixel data length checks.
_CHECKED = (
    "BurnedInAnnotation", "NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated"
)  # fmt: skip


@dataclass(frozen=True)
class CompletedStudy:
    """A study whose quiet timer expired, routed to its models and claimed exactly once."""

    study_key: str  # opaque spool id, safe to log (no PHI)
    run_number: int  # 1; late instances after forwarding give 2, 3 ... (a revision run)
    models: tuple[str, ...]  # every model the routing rules chose (one run each), rule order
    series: dict[str, list[Path]]  # original SeriesInstanceUID -> spooled files: PHI keys
    priority: Priority = Priority.ROUTINE  # STAT goes first at every stage
    # An operator's re-run (`edge-forwarder rerun`) pins versions: model name -> version.
    pinned_versions: Mapping[str, str] = field(default_factory=dict)


class _Refused(Exception):
    """Internal: a store is answered with `status`; `reason` is logged (never PHI)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Outcome(Enum):
    """What became of one received instance (all of them are acknowledged: kept durably)."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing changes
    REPLACED = "replaced"  # same sender, study not forwarded yet: a modality's correction
    CONFLICT = "conflict"  # different bytes otherwise: quarantined, never replacing
    QUARANTINED = "quarantined"  # burned-in risk, no pixel data


@dataclass
class _Arrival:
    """A received, fsync'ed instance waiting for its journal row (one group commit)."""

    file: Path
    size: int
    sender: str | None
    study_uid: str
    series_uid: str
    sop_uid: str
    attrs: dict[str, str]
    quarantine_reason: str | None
    now: float


@dataclass(frozen=True)
class _Placed:
    outcome: Outcome
    study_key: str | None
    first: bool
    reason: str | None = None


class Intake:
    """Owns the SCP, the spool and the completion detector of one forwarder.

    Parameters
    ----------
    settings
        Endpoint, senders, spool, timers and rules; see `IntakeSettings`.
    """

    def __init__(self, settings: IntakeSettings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self.journal = Journal(settings.spool_dir / "journal.sqlite3")
        self.policy = SenderPolicy(settings)
        self._attributes = rule_attributes([*settings.routing, *settings.expected_series])
        self._wanted = tags_for([*_REQUIRED, *_CHECKED, *self._attributes])
        self._allowed_risky = frozenset(
            uid for rule in settings.routing for uid in rule.allow_burned_in_risk_sop_classes
        )
        self._server: IntakeServer | None = None
        self._ae = self._make_ae()
        self._commit: GroupCommit[_Arrival, _Placed] = GroupCommit(self._place_batch)
        self._free_checked = (0.0, 0)
        self._free_lock = threading.Lock()

    # ---- lifecycle ------------------------------------------------------------------------

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.maximum_pdu_size = s.maximum_pdu_size
        ae.maximum_associations = s.max_associations
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        return ae

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(s.tls_ca)
        return context

    def _warn_about_trust(self) -> None:
        """Said at every start, so a weakened setup never goes unnoticed in the logs."""
        s = self.settings
        if s.allow_any_sender:
            log.warning(
                "intake_accepts_any_sender",
                reason="allow_any_sender is set: any host that can reach the port may store",
            )
        if s.tls_cert is not None and s.tls_ca is None:
            log.warning(
                "intake_tls_without_client_authentication",
                reason="tls_ca is not set: TLS encrypts, but senders are not authenticated",
            )
        elif s.tls_cert is None:
            log.info("intake_plain_tcp", reason="no TLS: mutual TLS is the recommended setup")

    def start(self) -> None:
        """Resume the spool after a restart, then serve associations in the background."""
        dropped = self.spool.clear_partial_writes()
        dropped += self.spool.sweep_unjournaled(self.journal.paths())
        reopened = self.journal.reopen_claimed()
        log.info("intake_resumed", count=reopened, parts=dropped)
        self._warn_about_trust()
        s = self.settings
        tls = self._ssl_context()

        def configure(server: IntakeServer) -> None:
            server.policy = self.policy
            server.spool = self.spool
            server.tls = tls
            server.max_instance_bytes = s.max_instance_bytes
            server.max_pdu = s.maximum_pdu_size
            server.pdu_timeout_s = s.network_timeout_s
            server.handshake_timeout_s = s.acse_timeout_s

        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        self._server = start_intake_server(self._ae, (s.host, s.port), handlers, configure)
        log.info(
            "intake_listening",
            target=f"{s.host}:{self.port}",
            count=len(s.senders),
            kind="tls" if tls is not None else "tcp",
        )

    @property
    def port(self) -> int:
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.spool.close()
        self.journal.close()

    # ---- DIMSE handlers -------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_aborted(self, event: Any) -> None:
        # A sender that gives up (its DIMSE timeout, a dropped link) says so only on its own
        # side: the site needs our record of it too. What was acknowledged before is kept.
        log.warning("association_aborted", name=getattr(event.assoc.acse, "sender", None))

    def _on_store(self, event: Any) -> int:
        # A handler that raises makes pynetdicom answer a generic failure; we answer the
        # specific status ourselves and keep serving whatever the input was.
        incoming: IncomingFile | None = getattr(event.request, "_intake_incoming", None)
        sender = getattr(event.assoc.acse, "sender", None)
        placed = False
        try:
            if incoming is None:
                raise _Refused(STATUS_CANNOT_UNDERSTAND, "no_data_set")
            outcome = self._store(incoming, sender, str(event.context.abstract_syntax))
            placed = True
        except _Refused as refused:
            log.warning("store_refused", status=refused.status, reason=refused.reason, name=sender)
            return refused.status
        except (OSError, sqlite3.OperationalError) as exc:
            log.error("store_out_of_resources", error=type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # the service must survive any input
            log.error("store_failed", error=type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        finally:
            if incoming is not None and not placed:
                incoming.discard()  # refused or failed: its file goes, wherever it got to
        if outcome.outcome is Outcome.STORED and outcome.first:
            # The study's first instance is durably on the edge: when a timeline starts.
            log.info("received", stage="received", study_key=outcome.study_key, count=1)
        elif outcome.outcome in (Outcome.REPLACED, Outcome.CONFLICT, Outcome.QUARANTINED):
            level = log.info if outcome.outcome is Outcome.REPLACED else log.warning
            level(
                f"instance_{outcome.outcome.value}",
                study_key=outcome.study_key,
                reason=outcome.reason,
                name=sender,
            )
        return STATUS_SUCCESS

    def _disk_low(self) -> bool:
        # statvfs on every store costs a syscall per instance; the answer changes slowly.
        now = time.monotonic()
        with self._free_lock:
            checked_at, free = self._free_checked
            if now - checked_at > 0.5:
                free = self.spool.free_bytes()
                self._free_checked = (now, free)
        return free < self.settings.min_free_disk_bytes

    def _store(self, incoming: IncomingFile, sender: str | None, context_class: str) -> _Placed:
        if self._disk_low():
            raise _Refused(STATUS_OUT_OF_RESOURCES, "spool_disk_low")
        # Moved, then fsync'ed while its header is read: see IncomingFile.start_sync. Until its
        # journal row commits the file is unacknowledged; a crash leaves it for the start-up
        # sweep, and a refusal deletes it.
        incoming.move_to(self.spool.object_path())
        incoming.start_sync(self.spool.syncs)
        header, pixel_length = self._read_header(incoming)
        for keyword in _REQUIRED:
            if not _text(header, keyword):
                raise _Refused(STATUS_DATASET_MISMATCH, f"missing_{keyword}")
        sop_class = _text(header, "SOPClassUID")
        if sop_class != context_class:
            raise _Refused(STATUS_DATASET_MISMATCH, "sop_class_mismatch")
        size = incoming.finish_sync()
        arrival = _Arrival(
            file=incoming.path,
            size=size,
            sender=sender,
            study_uid=_text(header, "StudyInstanceUID"),
            series_uid=_text(header, "SeriesInstanceUID"),
            sop_uid=_text(header, "SOPInstanceUID"),
            attrs={k: _text(header, k) for k in self._attributes},
            quarantine_reason=self._quarantine_reason(header, sop_class, pixel_length is not None),
            now=time.time(),
        )
        return self._commit.submit(arrival)

    def _read_header(self, incoming: IncomingFile) -> tuple[Any, int | None]:
        syntax = incoming.transfer_syntax
        if syntax != _DEFLATED:
            return _read_header(incoming.path, incoming.dataset_offset, syntax, self._wanted)
        # Inflated into a scratch copy, capped: a small deflate bomb never reaches memory.
        scratch = self.spool.scratch_path()
        try:
            offset = _inflate(incoming, scratch, self.settings.max_instance_bytes)
            return _read_header(scratch, offset, _EXPLICIT_LE, self._wanted)
        finally:
            scratch.unlink(missing_ok=True)

    def _quarantine_reason(self, header: Any, sop_class: str, pixel_tag: bool) -> str | None:
        if self.settings.quarantine_burned_in:
            risk = burned_in_risk(
                sop_class, _text(header, "BurnedInAnnotation"), self._allowed_risky
            )
            if risk is not None:
                return risk.value
        if not pixel_tag and not sop_class.startswith(SR_CLASS_PREFIX):
            return "missing_pixel_data"
        return None

    # ---- placing received instances (group commit) ----------------------------------------

    def _place_batch(self, batch: list[_Arrival]) -> list[_Placed | BaseException]:
        """Move each fsync'ed file into place and journal it, all in one transaction.

        Order, for kill -9 at any point: moved into objects/, the file and its folder fsync'ed
        (by the receiving thread) -> quarantine folders fsync'ed -> journal commit ->
        acknowledged. A crash before the
        commit leaves an unjournaled file (swept at start) and an unacknowledged instance;
        never the reverse.
        """
        results: list[_Placed | BaseException] = []
        folders: set[Path] = set()
        superseded: list[Path] = []
        with self.journal.batch() as journal:
            for arrival in batch:
                try:
                    with journal.item():
                        results.append(self._place(journal, arrival, folders, superseded))
                except Exception as error:
                    results.append(error)
            for folder in sorted(folders, key=lambda p: len(p.parts)):
                fsync_directory(folder)
        # Only once the journal points at the new versions may the old ones go.
        for path in superseded:
            path.unlink(missing_ok=True)
        return results

    def _place(
        self, journal: JournalBatch, arrival: _Arrival, folders: set[Path], superseded: list[Path]
    ) -> _Placed:
        if arrival.quarantine_reason is not None:
            self._quarantine(journal, arrival, None, arrival.quarantine_reason, folders)
            return _Placed(Outcome.QUARANTINED, None, False, arrival.quarantine_reason)
        stored = journal.stored(arrival.sop_uid)
        if stored is not None:
            if _same_bytes(stored.path, arrival.file):
                arrival.file.unlink(missing_ok=True)
                return _Placed(Outcome.DUPLICATE, stored.study_key, False)
            conflict = _conflict(stored, arrival)
            if conflict is not None:
                # Never a silent overwrite: the new version is kept aside for a person.
                self._quarantine(journal, arrival, stored.study_key, conflict, folders)
                journal.audit(
                    "instance_conflict_quarantined",
                    stored.study_key,
                    arrival.sender,
                    conflict,
                    arrival.now,
                )
                return _Placed(Outcome.CONFLICT, stored.study_key, False, conflict)
        study_key = journal.study_key_for(arrival.study_uid, arrival.now)
        # Its name in objects/ is durable already (IncomingFile.start_sync).
        _, _, first = journal.add_instance(
            study_key,
            arrival.sop_uid,
            arrival.series_uid,
            arrival.file,
            arrival.size,
            arrival.attrs,
            arrival.sender,
            arrival.now,
        )
        if stored is None:
            return _Placed(Outcome.STORED, study_key, first)
        superseded.append(stored.path)
        journal.audit(
            "instance_replaced", study_key, arrival.sender, "resent_by_sender", arrival.now
        )
        return _Placed(Outcome.REPLACED, study_key, False, "resent_by_sender")

    def _quarantine(
        self,
        journal: JournalBatch,
        arrival: _Arrival,
        study_key: str | None,
        reason: str,
        folders: set[Path],
    ) -> None:
        target = self.spool.quarantine_path(os.urandom(16).hex())
        os.replace(arrival.file, target)
        folders.add(target.parent)
        journal.add_quarantine(study_key, target, reason, arrival.now)

    # ---- completion -----------------------------------------------------------------------

    def poll_completed(self, now: float | None = None) -> list[CompletedStudy]:
        """Studies whose quiet timers expired, routed and claimed exactly once each."""
        now = time.time() if now is None else now
        s = self.settings
        completed: list[CompletedStudy] = []
        for study in self.journal.open_studies():
            series = self.journal.series_of(study.study_key)
            if not series:
                continue
            quiet_for = now - study.last_at
            if quiet_for < s.quiet_seconds_study:
                continue
            if any(now - item.last_at < s.quiet_seconds_series for item in series):
                continue
            references = self.journal.pinned_models(study.study_key)
            pinned = [split_model_reference(reference) for reference in references]
            if pinned:
                # A re-run of a study that was complete before: its models are the operator's.
                completed.extend(self._claim_rerun(study.study_key, study.run_number, pinned))
                continue
            missing = [
                rule.name
                for rule in s.expected_series
                if not any(series_matches(rule, item) for item in series)
            ]
            if missing:
                if quiet_for < s.quiet_seconds_study + s.expected_series_max_wait_seconds:
                    continue
                log.warning(
                    "expected_series_missing", study_key=study.study_key, name=",".join(missing)
                )
            chosen = choose_models(s.routing, series)
            if not chosen:
                self.journal.set_unrouted(study.study_key)
                log.info("route_decision", study_key=study.study_key, status="no_rule_matched")
                continue
            models = tuple(model for _, model in chosen)
            if not self.journal.claim(study.study_key, study.run_number, models):
                continue
            priority = study_priority([s.routing[index] for index, _ in chosen], series)
            for rule_index, model in chosen:
                log.info(
                    "route_decision",
                    study_key=study.study_key,
                    run_number=study.run_number,
                    name=model,
                    status=f"rule_{rule_index}",
                    series_count=len(series),
                    priority=priority,
                )
            completed.append(
                CompletedStudy(
                    study_key=study.study_key,
                    run_number=study.run_number,
                    models=models,
                    series=self.journal.instance_paths(study.study_key),
                    priority=priority,
                )
            )
        return completed

    def _claim_rerun(
        self, study_key: str, run_number: int, pinned: list[tuple[str, str | None]]
    ) -> list[CompletedStudy]:
        models = tuple(name for name, _ in pinned)
        if not self.journal.claim(study_key, run_number, models):
            return []
        for name, version in pinned:
            log.info("route_decision", study_key=study_key, run_number=run_number, name=name,
                     version=version, status="rerun")  # fmt: skip
        return [
            CompletedStudy(
                study_key=study_key,
                run_number=run_number,
                models=models,
                series=self.journal.instance_paths(study_key),
                pinned_versions={name: version for name, version in pinned if version},
            )
        ]

    def mark_forwarded(self, study_key: str, run_number: int) -> None:
        self.journal.finish(study_key, run_number, "FORWARDED", None)
        log.info("study_forwarded", study_key=study_key, run_number=run_number)

    def mark_failed(self, study_key: str, run_number: int, reason: str) -> None:
        """`reason` must be free of PHI (a code or an exception class name)."""
        self.journal.finish(study_key, run_number, "FAILED", reason)
        log.warning("study_failed", study_key=study_key, run_number=run_number, reason=reason)


def _read_header(
    path: Path, offset: int, syntax: str, wanted: frozenset[int]
) -> tuple[Any, int | None]:
    """Read the wanted attributes, check the element structure of the whole data set without
    reading pixel values (a truncated instance is caught here), tell if pixel data is there."""
    header: Any
    if syntax == _BIG_ENDIAN:
        # Retired and rare: pydicom reads it (header only, large values left on disk).
        try:
            with open(path, "rb") as stream:
                header = pydicom.dcmread(stream, stop_before_pixels=True, defer_size=_DEFER_BYTES)
                more = stream.read(1) != b""
        except Exception as exc:
            raise _Refused(STATUS_CANNOT_UNDERSTAND, "undecodable_dataset") from exc
        return header, (-1 if more else None)
    try:
        header, pixel_length = read_header(path, offset, syntax, wanted)
    except HeaderError as error:
        raise _Refused(STATUS_CANNOT_UNDERSTAND, str(error)) from error
    if (
        pixel_length is not None
        and syntax in UNCOMPRESSED_LITTLE_ENDIAN
        and pixel_length != 0xFFFFFFFF
    ):
        try:
            frames = int(_text(header, "NumberOfFrames") or 1)
            expected = (
                int(_text(header, "Rows")) * int(_text(header, "Columns"))
                * int(_text(header, "SamplesPerPixel")) * frames
                * int(_text(header, "BitsAllocated")) // 8
            )  # fmt: skip
        except _Refused:
            raise
        except Exception as exc:
            raise _Refused(STATUS_CANNOT_UNDERSTAND, "undecodable_image_pixel_module") from exc
        if pixel_length not in (expected, expected + 1):
            raise _Refused(STATUS_CANNOT_UNDERSTAND, "pixel_data_length_mismatch")
    return header, pixel_length


def _conflict(stored: Any, arrival: _Arrival) -> str | None:
    """Why a different version of a stored instance may not replace it, or None if it may.

    The rule (docs/edge-forwarder.md): the sender that stored it may resend a corrected
    version while its study is still on the edge and not handed out for forwarding.
    """
    if stored.study_uid != arrival.study_uid:
        return "conflict_other_study"
    if stored.sender is None or stored.sender != arrival.sender:
        return "conflict_other_sender"
    if stored.study_state not in ("OPEN", "UNROUTED"):
        return "conflict_study_forwarded"
    return None


def _same_bytes(stored: Path, received: Path) -> bool:
    try:
        return filecmp.cmp(stored, received, shallow=False)
    except FileNotFoundError:
        return False  # the stored version is gone (purged): the new one takes its place


def _text(header: Any, keyword: str) -> str:
    """A small attribute as text; a huge or undecodable value refuses the instance."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None or tag not in header:
        return ""
    raw = header.get_item(tag)
    if isinstance(raw, RawDataElement) and raw.length > _DEFER_BYTES:
        raise _Refused(STATUS_CANNOT_UNDERSTAND, f"oversized_{keyword}")
    try:
        return str(header[tag].value or "")
    except Exception as exc:  # a value that does not decode
        raise _Refused(STATUS_CANNOT_UNDERSTAND, f"undecodable_{keyword}") from exc


def _inflate(incoming: IncomingFile, scratch: Path, cap: int) -> int:
    """Write the inflated data set of a deflated instance as an explicit VR LE Part 10 file.

    zlib output is pulled `_INFLATE_CHUNK` bytes at a time and counted: past `cap` the
    instance is refused, so a data set that inflates a thousandfold costs one chunk of memory.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(incoming.path, "rb") as source, open(scratch, "wb") as out:
        source.seek(incoming.dataset_offset)
        # The same file meta, naming the syntax the inflated bytes are in.
        prefix = part10_prefix(incoming.sop_class, incoming.sop_instance, _EXPLICIT_LE)
        out.write(prefix)
        try:
            while chunk := source.read(_INFLATE_CHUNK):
                data = inflater.decompress(chunk, _INFLATE_CHUNK)
                while True:
                    total += len(data)
                    if total > cap:
                        raise _Refused(STATUS_OUT_OF_RESOURCES, "inflated_too_large")
                    out.write(data)
                    if not inflater.unconsumed_tail:
                        break
                    data = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
            rest = inflater.flush()
        except zlib.error as exc:
            raise _Refused(STATUS_CANNOT_UNDERSTAND, "undecodable_deflate") from exc
        if total + len(rest) > cap:
            raise _Refused(STATUS_OUT_OF_RESOURCES, "inflated_too_large")
        out.write(rest)
    return len(prefix)
