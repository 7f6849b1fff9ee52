"""The one Logger, Tracer and Metrics every function shares (Powertools)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

logger = Logger()
tracer = Tracer()
# The stack sets POWERTOOLS_METRICS_NAMESPACE; the default keeps a handler working when this
# module was imported before its environment was set (an in-process local run, a test session
# that collected the functions first): Powertools reads the variable once, at construction.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ImagingAI"))


def add_metric_with_dimension(
    name: str, unit: MetricUnit, value: float, dimension: str, dimension_value: str
) -> None:
    """A metric with one extra dimension besides `service` (it needs its own EMF record)."""
    add_metric_with_dimensions(name, unit, value, {dimension: dimension_value})


def add_metric_with_dimensions(
    name: str, unit: MetricUnit, value: float, dimensions: dict[str, str]
) -> None:
    """A metric with extra dimensions besides `service`, in its own EMF record.

    Dimension values are site codes, model names, stage names and drift features: never a
    value read from a study (no PHI in any metric).
    """
    if is_metrics_disabled():  # single_metric ignores POWERTOOLS_METRICS_DISABLED itself
        return
    with single_metric(
        name=name,
        unit=unit,
        value=value,
        namespace=metrics.namespace,
        default_dimensions=metrics.default_dimensions,
    ) as metric:
        for dimension, dimension_value in dimensions.items():
            metric.add_dimension(name=dimension, value=dimension_value)


RUNS_ENDED_METRIC = "RunsEnded"  # dimensions site, model, outcome: studies per day
TURNAROUND_METRIC = "TurnaroundSeconds"  # dimensions site, model, stage: p50 / p95


def record_run_ended(site: str, model_name: str | None, outcome: str, reason: str = "") -> None:
    """One run ended (delivered, failed, not analyzed): the value report's counts, live.

    The reason goes to the log line (Logs Insights counts reasons), not into a dimension:
    free text would make a metric per wording.
    """
    model = model_name or "unknown"
    add_metric_with_dimensions(
        RUNS_ENDED_METRIC, MetricUnit.Count, 1, {"site": site, "model": model, "outcome": outcome}
    )
    logger.info("run ended", run_outcome=outcome, reason=reason, site=site, model=model)


class StepSeconds:
    """Wall seconds of the named steps of one invocation, logged with its outcome line.

    CloudWatch Logs Insights (and the local demo) read where an invocation's time went from
    one field instead of from timestamps of several lines.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(
                self.seconds.get(name, 0.0) + time.perf_counter() - started, 3
            )
