"""JSON logs without PHI, Prometheus /metrics + /healthz, and FHIR AuditEvent JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from imaging_ai.edge_stage import EdgeStage
from imaging_ai.http_handler import QuietHandler
from imaging_ai.logs import JsonFormatter

LOGGER_NAME = "edge_forwarder"
# Only these keyword fields reach a log line: pseudonyms, counts and stage names, never PHI.
_ALLOWED_FIELDS = frozenset(
    {
        "stage",
        "step",
        "study_key",
        "run_number",
        "run_id",
        "pseudo_study_uid",
        "pseudo_series_uid",
        "object_key",
        "series_count",
        "instance_count",
        "bytes",
        "parts",
        "seconds",
        "attempt",
        "wait_s",
        "target",
        "status",
        "reason",
        "error",
        "kind",
        "name",
        "config",
        "endpoint",
        "count",
        "mib_per_s",
        "resumed",
        "http_status",
        "where",
        "priority",  # ROUTINE or STAT: not PHI
    }
)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(allowed_fields=_ALLOWED_FIELDS))
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # pynetdicom logs dataset contents at DEBUG; keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # The Encryption SDK logs a traceback of its own when a tampered object fails to close;
    # the inbound boundary records that refusal instead (no traceback reaches stderr).
    logging.getLogger("aws_encryption_sdk").setLevel(logging.CRITICAL)
    silence_dicom_library_warnings()


def silence_dicom_library_warnings() -> None:
    """Keep pydicom's and highdicom's own warnings out of the logs.

    They quote element values when data is malformed (a fuzzed or truncated instance makes
    pydicom print a whole header, patient name included), so they must never reach stderr
    or a log file on a machine that holds PHI. Our own code reports such instances by status
    code and quarantine reason instead.
    """
    for library in ("pydicom", "highdicom"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module=rf"{library}(\..*)?$")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a named event with keyword fields (fields outside the allow-list are dropped)."""
    logging.getLogger(LOGGER_NAME).log(level, event, extra={"fields": fields})


def log_stage(stage: EdgeStage, **fields: Any) -> None:
    """Log that a run reached `stage`: the event is named after it and carries it."""
    log_event(stage, stage=stage, **fields)


class Metrics:
    """The forwarder's Prometheus metrics, on a registry of its own (tests make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Every name is edge_forwarder_<name>, on this registry.
        named: dict[str, Any] = {"namespace": "edge_forwarder", "registry": self.registry}
        self.studies = Counter("studies", "Studies by stage reached", ["stage"], **named)
        self.uploaded_bytes = Counter("uploaded_bytes", "Encrypted bytes uploaded to S3", **named)
        self.upload_retries = Counter("upload_retries", "S3 calls retried after an error", **named)
        self.deliveries = Counter(
            "deliveries", "Deliveries by target and outcome", ["target", "outcome"], **named
        )
        self.shadow_results = Counter(
            "shadow_results",
            "Results of shadow-mode models kept on the edge, not delivered",
            ["model"],
            **named,
        )
        self.dead_letters = Gauge("dead_letters", "Deliveries parked in dead-letter state", **named)
        self.backlog = Gauge("upload_backlog", "Studies prepared but not yet committed", **named)
        self.stage_seconds = Histogram(
            "stage_seconds",
            "Time spent per stage",
            ["stage"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
            **named,
        )
        self.last_loop = Gauge("last_loop_timestamp_seconds", "When the run loop last ran", **named)


class HealthState:
    """What /healthz reports: the run loop ticks, and the age of the last tick."""

    def __init__(self, stale_after_s: float = 120.0) -> None:
        self.stale_after_s = stale_after_s
        self._last_tick = time.monotonic()
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def tick(self) -> None:
        with self._lock:
            self._last_tick = time.monotonic()

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = time.monotonic() - self._last_tick
        healthy = age < self.stale_after_s
        return healthy, {"status": "ok" if healthy else "stale", "loop_age_s": round(age, 1)}


class MetricsServer:
    """A tiny HTTP server for /metrics and /healthz (bind to loopback unless scraped remotely)."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: HealthState) -> None:
        registry, health_state = metrics.registry, health

        # Quiet: access logs would duplicate scrapes every 15 s.
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif self.path == "/healthz":
                    ok, report = health_state.snapshot()
                    body, status = json.dumps(report).encode(), 200 if ok else 503
                    kind = "application/json"
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.reply(status, body, kind)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# DICOM Audit Message (DCM) and HL7 codes used by IHE ATNA-style FHIR AuditEvents.
_AUDIT_TYPES: dict[str, tuple[str, str, str, str]] = {
    # action: (type code, type display, subtype code, AuditEvent.action)
    "deidentify": ("110109", "Order Record", "deidentify", "U"),
    "upload": ("110106", "Export", "upload", "C"),
    "reidentify": ("110109", "Order Record", "reidentify", "U"),
    "export": ("110106", "Export", "export", "C"),
    # A result from the cloud taken in; outcome 8 when it was refused at the boundary.
    "import": ("110107", "Import", "import", "C"),
    # Retention deleting spooled originals (or quarantined instances) of a study.
    "purge": ("110105", "DICOM Study Deleted", "purge", "D"),
    # The cloud's verdict on a study: outside the model's intended use, nothing delivered.
    "not_analyzed": ("110111", "Procedure Record", "not_analyzed", "R"),
    # A critical finding told to the site (EHR Communication or webhook), or the attempt.
    "critical_notice": ("110106", "Export", "critical_notice", "C"),
    # A shadow-mode model's results kept on the edge and deliberately not delivered.
    "shadow_stored": ("110111", "Procedure Record", "shadow_stored", "R"),
}


class AuditTrail:
    """Append-only FHIR R4 AuditEvent JSON lines; entities named by pseudonym, never PHI."""

    def __init__(self, path: Path, site: str, agent_name: str = "edge-forwarder") -> None:
        self.path = path
        self.site = site
        self.agent_name = agent_name
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(
        self,
        action: str,
        *,
        pseudo_study_uid: str | None,
        run_id: str | None = None,
        outcome: str = "0",
        destination: str | None = None,
        detail: str | None = None,
        study_key: str | None = None,
    ) -> dict[str, Any]:
        """Append one AuditEvent. A study is named by pseudo UID, or, where it never got
        one (quarantined before de-identification), by the spool's opaque study key."""
        type_code, type_display, subtype, crud = _AUDIT_TYPES[action]
        if pseudo_study_uid:
            identifier = {"system": "urn:dicom:uid", "value": f"urn:oid:{pseudo_study_uid}"}
        else:
            identifier = {"system": "urn:edge-forwarder:study-key", "value": study_key or "none"}
        entity: dict[str, Any] = {
            "what": {"identifier": identifier},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
        }
        if run_id:
            entity["detail"] = [{"type": "run_id", "valueString": run_id}]
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": str(uuid.uuid4()),
            "type": {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": type_code,
                "display": type_display,
            },
            "subtype": [{"system": "urn:edge-forwarder:audit", "code": subtype}],
            "action": crud,
            "recorded": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "outcome": outcome,
            "agent": [
                {
                    "who": {"display": self.agent_name},
                    "requestor": True,
                    "network": {"address": self.site, "type": "5"},
                }
            ],
            "source": {"site": self.site, "observer": {"display": self.agent_name}},
            "entity": [entity],
        }
        if destination:
            event["agent"].append({"who": {"display": destination}, "requestor": False})
        if detail:
            event["outcomeDesc"] = detail
        with self._lock, self.path.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps(event) + "\n")
        return event


@dataclass(frozen=True)
class Telemetry:
    """What every part of the forwarder reports to."""

    metrics: Metrics
    health: HealthState
    audit: AuditTrail
