"""Window statistics and the metrics made of them: names, values, dimensions, EMF documents."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bayroute.monitoring.publish import (
    BELOW_THRESHOLD_SHARE,
    CONFIDENCE_P10,
    DRIFT_SCORE,
    PREDICTED_CLASS_SHARE,
    REQUEST_COUNT,
    EmfSink,
    MetricDatum,
    PutMetricDataSink,
    drift_datums,
    window_datums,
)
from bayroute.monitoring.records import Observation
from bayroute.monitoring.stats import Baseline, Bins
from bayroute.monitoring.windows import ALL_VERSIONS, window_summaries

T0 = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
SERVICE = "bayroute-monitor"


def observation(
    seconds: float, confidence: float | None, predicted: str | None = "bicycle", version: str = "v1", **extra: Any
) -> Observation:
    base = Observation(
        event_id=f"e{seconds}-{version}",
        time=T0 + timedelta(seconds=seconds),
        source="k",
        endpoint="ep",
        variant="AllTraffic",
        model_version=version,
        confidence=confidence,
        predicted=predicted,
        probabilities=None,
        classes=None,
        object_key=None,
        inference_id=None,
        original_width=2000,
        original_height=1000,
        brightness=0.5,
        contrast=0.2,
    )
    return replace(base, **extra)


def test_observations_are_bucketed_per_window_and_version_plus_one_summary_over_everything() -> None:
    observations = [
        observation(1, 0.99),
        observation(30, 0.5, "motorcycle"),
        observation(59.9, 0.97, "motorcycle", version="v2"),
        observation(60, 0.9),
    ]
    summaries = window_summaries(observations, window_seconds=60, threshold=0.95)
    keyed = {(s.window.minute, s.model_version): s for s in summaries}
    assert set(keyed) == {(0, "v1"), (0, "v2"), (0, ALL_VERSIONS), (1, "v1"), (1, ALL_VERSIONS)}
    first = keyed[(0, ALL_VERSIONS)]
    assert (first.requests, first.scored, first.below_threshold) == (3, 3, 1)
    assert first.below_threshold_share == pytest.approx(1 / 3)
    assert first.class_mix == {"bicycle": pytest.approx(1 / 3), "motorcycle": pytest.approx(2 / 3)}
    assert first.confidence_mean == pytest.approx((0.99 + 0.5 + 0.97) / 3)
    assert first.confidence_p50 == pytest.approx(0.97)
    assert first.confidence_p10 == pytest.approx(0.5 + 0.2 * (0.97 - 0.5))
    assert first.original_megapixels_mean == 2.0
    assert first.endpoint is None and keyed[(0, "v1")].endpoint == "ep"
    assert keyed[(0, "v1")].requests == 2


def test_records_without_a_confidence_count_as_requests_only() -> None:
    [summary, _] = window_summaries([observation(1, None, None)], window_seconds=60, threshold=0.95)
    assert (summary.requests, summary.scored, summary.below_threshold_share, summary.confidence_p10) == (
        1,
        0,
        None,
        None,
    )
    assert {d.name for d in window_datums(summary, SERVICE)} == {
        REQUEST_COUNT,
        "InputBrightnessMean",
        "InputContrastMean",
        "InputOriginalMegapixelsMean",
    }


def test_summaries_of_a_version_with_a_baseline_carry_its_drift_counts() -> None:
    baseline = Baseline("v1", {"confidence": Bins((0.9,), (5, 5)), "brightness": Bins((0.4,), (5, 5))}, n=10)
    summaries = window_summaries(
        [observation(1, 0.95), observation(2, 0.5), observation(3, 0.99, version="v2")],
        window_seconds=60,
        threshold=0.95,
        baselines={"v1": baseline},
    )
    counts = {s.model_version: dict(s.drift_counts) for s in summaries}
    assert counts == {"v1": {"confidence": [1, 1], "brightness": [0, 2]}, "v2": {}, None: {}}


def test_window_metrics_carry_endpoint_and_version_or_the_monitor_service() -> None:
    summaries = window_summaries([observation(1, 0.5), observation(2, 0.99)], window_seconds=60, threshold=0.95)
    version, overall = sorted(summaries, key=lambda s: s.model_version is None)
    datums = {(d.name, d.dimensions): d for d in window_datums(version, SERVICE) + window_datums(overall, SERVICE)}
    per_version = (("Endpoint", "ep"), ("ModelVersion", "v1"))
    everything = (("service", SERVICE),)
    assert datums[(REQUEST_COUNT, per_version)].value == 2
    assert datums[(REQUEST_COUNT, per_version)].unit == "Count"
    assert datums[(BELOW_THRESHOLD_SHARE, everything)].value == 0.5
    assert datums[(CONFIDENCE_P10, everything)].timestamp == T0
    assert datums[(PREDICTED_CLASS_SHARE, (*everything, ("Class", "bicycle")))].value == 1.0


def test_drift_metrics_are_each_features_psi_and_their_maximum() -> None:
    datums = drift_datums(
        {"brightness": 1.2, "confidence": 0.1}, service=SERVICE, endpoint=None, model_version=None, timestamp=T0
    )
    assert {d.name: d.value for d in datums} == {"PsiBrightness": 1.2, "PsiConfidence": 0.1, DRIFT_SCORE: 1.2}
    assert {d.dimensions for d in datums} == {(("service", SERVICE),)}
    assert drift_datums({}, service=SERVICE, endpoint="ep", model_version="v1", timestamp=T0) == []


def datum(
    name: str, value: float, minute: int = 0, dims: tuple[tuple[str, str], ...] = (("service", SERVICE),)
) -> MetricDatum:
    return MetricDatum(name, value, "None", T0 + timedelta(minutes=minute), dims)


def test_emf_documents_have_exactly_the_datums_dimensions_and_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    stream = io.StringIO()
    EmfSink("bayroute", stream).publish([datum("A", 1.0), datum("B", 2.0), datum("A", 3.0, minute=1)])
    documents = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(documents) == 2
    first = next(d for d in documents if d["_aws"]["Timestamp"] == int(T0.timestamp() * 1000))
    [directive] = first["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "bayroute"
    assert directive["Dimensions"] == [["service"]]  # no second 'service' from POWERTOOLS_SERVICE_NAME
    assert {m["Name"] for m in directive["Metrics"]} == {"A", "B"}
    assert (first["A"], first["B"], first["service"]) == ([1.0], [2.0], SERVICE)


def test_emf_is_silent_where_powertools_metrics_are_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    stream = io.StringIO()
    EmfSink("bayroute", stream).publish([datum("A", 1.0)])
    assert stream.getvalue() == ""


def test_emf_documents_stay_under_a_hundred_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "bayroute-monitor")
    documents = EmfSink("bayroute").documents([datum(f"M{i}", float(i)) for i in range(150)])
    assert [len(d["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for d in documents] == [99, 51]
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]] for d in documents)


class RecordingCloudWatch:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def put_metric_data(self, **arguments: Any) -> None:
        self.calls.append(arguments)


def test_put_metric_data_sends_every_datum_in_batches() -> None:
    cloudwatch = RecordingCloudWatch()
    PutMetricDataSink(cloudwatch, "bayroute").publish([datum("A", float(i)) for i in range(1200)])
    assert [len(c["MetricData"]) for c in cloudwatch.calls] == [500, 500, 200]
    first = cloudwatch.calls[0]["MetricData"][0]
    assert first == {
        "MetricName": "A",
        "Dimensions": [{"Name": "service", "Value": SERVICE}],
        "Timestamp": T0,
        "Value": 0.0,
        "Unit": "None",
    }
