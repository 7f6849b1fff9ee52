"""The one Logger, Tracer and Metrics every function shares (Powertools)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def add_metric_with_dimension(
    name: str, unit: MetricUnit, value: float, dimension: str, dimension_value: str
) -> None:
    """A metric with one extra dimension besides `service` (it needs its own EMF record)."""
    if is_metrics_disabled():  # single_metric ignores POWERTOOLS_METRICS_DISABLED itself
        return
    with single_metric(
        name=name,
        unit=unit,
        value=value,
        namespace=metrics.namespace,
        default_dimensions=metrics.default_dimensions,
    ) as metric:
        metric.add_dimension(name=dimension, value=dimension_value)
