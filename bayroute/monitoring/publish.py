"""CloudWatch metrics of the monitor: their names, dimensions, and two ways to send them.

Each window's statistics become metrics with dimensions ``Endpoint`` and ``ModelVersion`` (one series per
endpoint and served version) and, for the same window over everything the monitor read, with ``service``
alone, valued the monitor function's name (``settings.names.monitor_function``; the Powertools dimension every
bayroute function's metrics carry): the series the alarms of ``infra/alarms.json`` and the dashboard watch,
so a new model version needs no new alarm. Class shares add a ``Class`` dimension. Percentiles
are computed here and published as plain values (``ConfidenceP10``, ``ConfidenceP50``): CloudWatch's own
percentiles need every raw value, and moto computes none.

Sinks: ``EmfSink`` writes CloudWatch embedded metric format lines (aws-lambda-powertools' serializer) to the
Lambda log, where CloudWatch extracts them with their own timestamps; ``PutMetricDataSink`` calls
``PutMetricData`` (the local stack's moto, or anywhere that is not a Lambda log stream).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TextIO

from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from bayroute.monitoring.windows import WindowSummary

UNKNOWN_ENDPOINT = "unknown"
COUNT = "Count"
NONE = "None"

REQUEST_COUNT = "RequestCount"
CONFIDENCE_MEAN = "ConfidenceMean"
CONFIDENCE_P10 = "ConfidenceP10"
CONFIDENCE_P50 = "ConfidenceP50"
BELOW_THRESHOLD_COUNT = "BelowThresholdCount"
BELOW_THRESHOLD_SHARE = "BelowThresholdShare"
PREDICTED_CLASS_SHARE = "PredictedClassShare"
INPUT_BRIGHTNESS = "InputBrightnessMean"
INPUT_CONTRAST = "InputContrastMean"
INPUT_MEGAPIXELS = "InputOriginalMegapixelsMean"
DRIFT_SCORE = "DriftScore"
PSI_METRICS = {"confidence": "PsiConfidence", "brightness": "PsiBrightness", "contrast": "PsiContrast"}

# EMF allows 100 metrics per document, but Powertools prints and clears its set by itself when it reaches 100;
# PutMetricData takes 1000 datums per call.
_EMF_MAX_METRICS = 99
_PUT_BATCH = 500


@dataclass(frozen=True)
class MetricDatum:
    name: str
    value: float
    unit: str
    timestamp: datetime
    dimensions: tuple[tuple[str, str], ...]


class MetricSink(Protocol):
    def publish(self, datums: Sequence[MetricDatum]) -> None: ...


def series_dimensions(service: str, endpoint: str | None, model_version: str | None) -> tuple[tuple[str, str], ...]:
    """``Endpoint`` and ``ModelVersion`` for one version's series; ``service`` for the series over everything."""
    if model_version is None:
        return (("service", service),)
    return (("Endpoint", endpoint or UNKNOWN_ENDPOINT), ("ModelVersion", model_version))


def window_datums(summary: WindowSummary, service: str) -> list[MetricDatum]:
    """The metrics of one window summary (statistics that have no value in the window are left out)."""
    dims = series_dimensions(service, summary.endpoint, summary.model_version)
    values: list[tuple[str, float | None, str]] = [
        (REQUEST_COUNT, float(summary.requests), COUNT),
        (CONFIDENCE_MEAN, summary.confidence_mean, NONE),
        (CONFIDENCE_P10, summary.confidence_p10, NONE),
        (CONFIDENCE_P50, summary.confidence_p50, NONE),
        (BELOW_THRESHOLD_COUNT, float(summary.below_threshold) if summary.scored else None, COUNT),
        (BELOW_THRESHOLD_SHARE, summary.below_threshold_share, NONE),
        (INPUT_BRIGHTNESS, summary.brightness_mean, NONE),
        (INPUT_CONTRAST, summary.contrast_mean, NONE),
        (INPUT_MEGAPIXELS, summary.original_megapixels_mean, NONE),
    ]
    datums = [MetricDatum(name, value, unit, summary.window, dims) for name, value, unit in values if value is not None]
    for name, share in summary.class_mix.items():
        datums.append(MetricDatum(PREDICTED_CLASS_SHARE, share, NONE, summary.window, (*dims, ("Class", name))))
    return datums


def drift_datums(
    drift: Mapping[str, float], *, service: str, endpoint: str | None, model_version: str | None, timestamp: datetime
) -> list[MetricDatum]:
    """PSI of each feature and ``DriftScore``, their maximum (nothing when no feature had enough samples)."""
    if not drift:
        return []
    dims = series_dimensions(service, endpoint, model_version)
    datums = [MetricDatum(PSI_METRICS[f], value, NONE, timestamp, dims) for f, value in sorted(drift.items())]
    datums.append(MetricDatum(DRIFT_SCORE, max(drift.values()), NONE, timestamp, dims))
    return datums


class PutMetricDataSink:
    """``PutMetricData`` through a boto3 CloudWatch client."""

    def __init__(self, cloudwatch: Any, namespace: str) -> None:
        self._cloudwatch = cloudwatch
        self.namespace = namespace

    def publish(self, datums: Sequence[MetricDatum]) -> None:
        for start in range(0, len(datums), _PUT_BATCH):
            batch = datums[start : start + _PUT_BATCH]
            self._cloudwatch.put_metric_data(
                Namespace=self.namespace,
                MetricData=[
                    {
                        "MetricName": d.name,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in d.dimensions],
                        "Timestamp": d.timestamp,
                        "Value": d.value,
                        "Unit": d.unit,
                    }
                    for d in batch
                ],
            )


class EmfSink:
    """Embedded metric format documents, one per (timestamp, dimensions), written as log lines.

    Powertools serializes each document; the sink sets no ``service`` dimension, so the dimensions are exactly
    the datum's and the same series as ``PutMetricData`` would create.
    """

    def __init__(self, namespace: str, stream: TextIO | None = None) -> None:
        self.namespace = namespace
        self._stream = stream

    def publish(self, datums: Sequence[MetricDatum]) -> None:
        if is_metrics_disabled():  # POWERTOOLS_METRICS_DISABLED, as for every Powertools metric
            return
        stream = self._stream or sys.stdout
        for document in self.documents(datums):
            stream.write(json.dumps(document, separators=(",", ":")) + "\n")
        stream.flush()

    def documents(self, datums: Iterable[MetricDatum]) -> list[dict[str, Any]]:
        groups: dict[tuple[datetime, tuple[tuple[str, str], ...]], list[MetricDatum]] = defaultdict(list)
        for datum in datums:
            groups[(datum.timestamp, datum.dimensions)].append(datum)
        documents = []
        for (timestamp, dims), members in groups.items():
            for start in range(0, len(members), _EMF_MAX_METRICS):
                # An explicit empty service: Powertools would otherwise add POWERTOOLS_SERVICE_NAME as a dimension.
                provider = AmazonCloudWatchEMFProvider(namespace=self.namespace, service="")
                for name, value in dims:
                    provider.add_dimension(name=name, value=value)
                for datum in members[start : start + _EMF_MAX_METRICS]:
                    provider.add_metric(name=datum.name, unit=datum.unit, value=datum.value)
                provider.set_timestamp(timestamp)
                documents.append(dict(provider.serialize_metric_set()))
        return documents
