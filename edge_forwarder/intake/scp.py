"""The intake service: a C-STORE SCP over a durable spool, with study completion and routing."""

from __future__ import annotations

import io
import sqlite3
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from edge_forwarder.deid.codec import iter_elements
from edge_forwarder.intake.journal import Journal
from edge_forwarder.intake.routing import choose_route, rule_attributes, series_matches
from edge_forwarder.intake.settings import IntakeSettings
from edge_forwarder.intake.spool import Spool
from imaging_ai.dicom_policy import (
    ACCEPTED_TRANSFER_SYNTAXES,
    BURNED_IN_RISK_SOP_CLASSES,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NEEDS_FULL_DECODE,
    REQUIRED_ATTRIBUTES,
    UNCOMPRESSED_LITTLE_ENDIAN,
    burned_in_risk,
)
from imaging_ai.logs import get_logger

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


@dataclass(frozen=True)
class CompletedStudy:
    """A study whose quiet timer expired, routed to a model and claimed exactly once."""

    study_key: str  # opaque spool id, safe to log (no PHI)
    run_number: int  # 1; late instances after forwarding give 2, 3 ... (a revision run)
    route: str  # the model the routing rules chose
    series: dict[str, list[Path]]  # original SeriesInstanceUID -> spooled files: PHI keys


class _Refused(Exception):
    """Internal: a store is answered with `status`; `reason` is logged (never PHI)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Intake:
    """Owns the SCP, the spool and the completion detector of one forwarder.

    Parameters
    ----------
    settings
        Endpoint, spool, timers and rules; see `IntakeSettings`.
    """

    def __init__(self, settings: IntakeSettings) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_dir)
        self.journal = Journal(settings.spool_dir / "journal.sqlite3")
        self._attributes = rule_attributes([*settings.routing, *settings.expected_series])
        self._allowed_risky = frozenset(
            uid for rule in settings.routing for uid in rule.allow_burned_in_risk_sop_classes
        )
        self._server: ThreadedAssociationServer | None = None
        self._ae = self._make_ae()

    # ---- lifecycle ------------------------------------------------------------------------

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.maximum_pdu_size = s.maximum_pdu_size
        ae.maximum_associations = 16
        if s.allowed_calling_aets is not None:
            ae.require_calling_aet = list(s.allowed_calling_aets)
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

    def start(self) -> None:
        """Resume the spool after a restart, then serve associations in the background."""
        dropped = self.spool.clear_partial_writes()
        reopened = self.journal.reopen_claimed()
        log.info("intake_resumed", count=reopened, parts=dropped)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        self._server = self._ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
        )
        log.info("intake_listening", target=f"{self.settings.host}:{self.port}")

    @property
    def port(self) -> int:
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.journal.close()

    # ---- DIMSE handlers -------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        # A handler that raises makes pynetdicom answer a generic failure; we answer the
        # specific status ourselves and keep serving whatever the input was.
        try:
            return self._store(event)
        except _Refused as refused:
            log.warning("store_refused", status=refused.status, reason=refused.reason)
            return refused.status
        except (OSError, sqlite3.OperationalError) as exc:
            log.error("store_out_of_resources", error=type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # the service must survive any input
            log.error("store_failed", error=type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND

    def _store(self, event: Any) -> int:
        s = self.settings
        if self.spool.free_bytes() < s.min_free_disk_bytes:
            raise _Refused(STATUS_OUT_OF_RESOURCES, "spool_disk_low")
        if event.request.DataSet.getbuffer().nbytes > s.max_instance_bytes:
            raise _Refused(STATUS_OUT_OF_RESOURCES, "instance_too_large")
        data = event.encoded_dataset()
        header, pixel_length = _read_header(data)
        for keyword in REQUIRED_ATTRIBUTES:
            try:
                present = bool(str(header.get(keyword, "") or ""))
            except Exception as exc:  # a value that does not decode
                raise _Refused(STATUS_CANNOT_UNDERSTAND, f"undecodable_{keyword}") from exc
            if not present:
                raise _Refused(STATUS_DATASET_MISMATCH, f"missing_{keyword}")
        sop_class = str(header.SOPClassUID)
        if sop_class != str(event.context.abstract_syntax):
            raise _Refused(STATUS_DATASET_MISMATCH, "sop_class_mismatch")
        now = time.time()
        reason = self._quarantine_reason(header, sop_class, pixel_length is not None)
        if reason is not None:
            path = self.spool.quarantine_path(data)
            self.spool.write_durably(path, data)
            self.journal.add_quarantine(None, path, reason, now)
            log.warning("instance_quarantined", reason=reason)
            return STATUS_SUCCESS  # kept durably on the edge, so acknowledged
        study_key = self.journal.study_key_for(str(header.StudyInstanceUID), now)
        sop_uid = str(header.SOPInstanceUID)
        path = self.spool.path_for(study_key, sop_uid)
        self.spool.write_durably(path, data)
        attrs = {k: str(header.get(k, "") or "") for k in self._attributes}
        _, _, first = self.journal.add_instance(
            study_key, sop_uid, str(header.SeriesInstanceUID), path, len(data), attrs, now
        )
        if first:
            # The study's first instance is durably on the edge: when a timeline starts.
            log.info("received", stage="received", study_key=study_key, count=1)
        return STATUS_SUCCESS

    def _quarantine_reason(self, header: Any, sop_class: str, pixel_tag: bool) -> str | None:
        if self.settings.quarantine_burned_in:
            risk = burned_in_risk(
                sop_class, str(header.get("BurnedInAnnotation", "")), self._allowed_risky
            )
            if risk is not None:
                return risk.value
        if not pixel_tag and not sop_class.startswith(SR_CLASS_PREFIX):
            return "missing_pixel_data"
        return None

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
            route = choose_route(s.routing, series)
            if route is None:
                self.journal.set_unrouted(study.study_key)
                log.info("route_decision", study_key=study.study_key, status="no_rule_matched")
                continue
            rule_index, model = route
            if not self.journal.claim(study.study_key, study.run_number, model):
                continue
            log.info(
                "route_decision",
                study_key=study.study_key,
                run_number=study.run_number,
                name=model,
                status=f"rule_{rule_index}",
                series_count=len(series),
            )
            completed.append(
                CompletedStudy(
                    study_key=study.study_key,
                    run_number=study.run_number,
                    route=model,
                    series=self.journal.instance_paths(study.study_key),
                )
            )
        return completed

    def mark_forwarded(self, study_key: str, run_number: int) -> None:
        self.journal.finish(study_key, run_number, "FORWARDED", None)
        log.info("study_forwarded", study_key=study_key, run_number=run_number)

    def mark_failed(self, study_key: str, run_number: int, reason: str) -> None:
        """`reason` must be free of PHI (a code or an exception class name)."""
        self.journal.finish(study_key, run_number, "FAILED", reason)
        log.warning("study_failed", study_key=study_key, run_number=run_number, reason=reason)


def _read_header(data: bytes) -> tuple[Any, int | None]:
    """Decode the header; check the element structure after it; tell if pixel data is there."""
    stream = io.BytesIO(data)
    try:
        header = pydicom.dcmread(stream, stop_before_pixels=True)
        syntax = str(header.file_meta.TransferSyntaxUID)
        if syntax in NEEDS_FULL_DECODE:
            return header, -1  # the stream is inflated or big endian: pydicom vouched for it
        offset = stream.tell()
        # Walking the remaining element headers catches truncated pixel data without
        # touching the pixel values themselves.
        pixel_length = None
        for element in iter_elements(
            memoryview(data), offset, len(data), syntax == IMPLICIT_VR_LITTLE_ENDIAN
        ):
            if element.tag >> 16 == 0x7FE0:
                pixel_length = element.length
    except Exception as exc:
        raise _Refused(STATUS_CANNOT_UNDERSTAND, "undecodable_dataset") from exc
    if (
        pixel_length is not None
        and syntax in UNCOMPRESSED_LITTLE_ENDIAN
        and pixel_length != 0xFFFFFFFF
    ):
        try:
            frames = int(header.get("NumberOfFrames", 1) or 1)
            expected = (
                int(header.Rows) * int(header.Columns) * int(header.SamplesPerPixel)
                * frames * int(header.BitsAllocated) // 8
            )  # fmt: skip
        except Exception as exc:
            raise _Refused(STATUS_CANNOT_UNDERSTAND, "undecodable_image_pixel_module") from exc
        if pixel_length not in (expected, expected + 1):
            raise _Refused(STATUS_CANNOT_UNDERSTAND, "pixel_data_length_mismatch")
    return header, pixel_length
