"""The Lambda functions: one thin handler per workflow step, over the logic in ``bayroute.steps``."""

from __future__ import annotations

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled


def count(metrics: Metrics, name: str, value: float = 1) -> None:
    """Add a Count metric, unless metrics are disabled (the local runtime).

    Disabled, Powertools neither publishes nor clears what was added, and once a metric holds 100 values it
    prints them as EMF to stdout regardless: a long local run would accumulate and print metrics.
    """
    if not is_metrics_disabled():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
