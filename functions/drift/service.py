"""Compare each site's and model's recent runs with their validation baseline; publish drift."""

from __future__ import annotations

from datetime import datetime

from aws_lambda_powertools.metrics import MetricUnit

from functions.common.observability import add_metric_with_dimensions, logger, metrics
from imaging_ai.drift import DriftStatus, drift_status
from imaging_ai.state import RunStateStore

DRIFT_SCORE_METRIC = "DriftScore"  # statistic / threshold, per site, model, kind, feature
DRIFT_DETECTED_METRIC = "DriftDetected"  # 1 or 0 per site and model; summed for the alarm


class DriftService:
    def __init__(self, state: RunStateStore, window_days: float) -> None:
        self._state = state
        self._window_days = window_days

    def check(self, now: datetime) -> list[DriftStatus]:
        """One pass over the window; every metric names sites, models and features only."""
        statuses = drift_status(self._state, now, self._window_days)
        for status in statuses:
            group = {"site": status.site, "model": status.model_name}
            for drift in status.drifts:
                add_metric_with_dimensions(
                    DRIFT_SCORE_METRIC,
                    MetricUnit.NoUnit,
                    drift.value / drift.threshold,
                    {**group, "kind": drift.kind.value, "feature": drift.feature},
                )
            if status.drifts:
                add_metric_with_dimensions(
                    DRIFT_DETECTED_METRIC, MetricUnit.Count, int(status.drifted), group
                )
            logger.info(
                "drift checked",
                site=status.site,
                model=status.model_name,
                window=status.window,
                has_baseline=status.has_baseline,
                drifted=[d.feature for d in status.drifts if d.drifted],
            )
        # The alarm's metric: sites and models drifting now, across the account.
        metrics.add_metric(
            name=DRIFT_DETECTED_METRIC,
            unit=MetricUnit.Count,
            value=sum(status.drifted for status in statuses),
        )
        return statuses
