"""Drift Lambda entry point: an EventBridge schedule → one pass of the drift service."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from functions.common.bootstrap import once, state_store
from functions.common.observability import logger, metrics, tracer
from functions.common.settings import DriftSettings
from functions.drift.service import DriftService


@once
def service() -> DriftService:
    settings = DriftSettings()
    return DriftService(state_store(settings), settings.drift_window_days)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    statuses = service().check(datetime.now(UTC))
    return {"checked": len(statuses), "drifting": sum(s.drifted for s in statuses)}
