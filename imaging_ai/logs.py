"""Structured JSON logging with keyword fields for library and edge code (Lambdas: Powertools)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and the caller's keyword fields.

    With `allowed_fields`, only those keyword fields reach the line (the edge forwarder's
    logs sit next to PHI: a field nobody vetted is dropped, not printed).
    """

    def __init__(self, allowed_fields: frozenset[str] | None = None) -> None:
        super().__init__()
        self.allowed_fields = allowed_fields

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields: dict[str, Any] = getattr(record, "fields", {})
        if self.allowed_fields is not None:
            fields = {k: v for k, v in fields.items() if k in self.allowed_fields}
        entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception messages may quote values we must not log.
            entry["exception_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class StructuredLogger:
    """`logger.info("event_name", field=value)`; never pass values read from PHI-bearing data."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, True, fields)


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(name)


def configure_json_logging(level: int = logging.INFO, stream: Any = None) -> None:
    """Send every logger's records to `stream` (stderr by default) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
