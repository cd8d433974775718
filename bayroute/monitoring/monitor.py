"""One pass of the monitor: the capture records written since the last pass → CloudWatch metrics → watermark.

A pass reads the monitor state (``bayroute.monitoring.state``), lists the capture objects that are new to it,
reads at most ``max_objects_per_pass`` of them (oldest first; the rest wait for the next pass), computes each
window's statistics (``bayroute.monitoring.windows``), adds the records' drift bin counts to the state's
last-hour counts, publishes the window metrics and the drift of the last ``drift_horizon_seconds`` (when it
rests on at least ``min_drift_samples`` records), and commits the state.

Exactly once: a record is counted by the pass that commits the watermark past it. Metrics are published just
before that commit; a pass that dies between the two (or loses the commit to a concurrent pass, which the
conditional write detects) leaves its records to the next pass, which publishes them again: the only way a
record is counted twice. On AWS the monitor function runs with reserved concurrency 1, so passes do not
overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bayroute.config import Settings
from bayroute.monitoring.publish import MetricDatum, MetricSink, drift_datums, window_datums
from bayroute.monitoring.records import ReadTally, read_lines, read_s3_objects
from bayroute.monitoring.state import CaptureObject, MonitorState, StateStore, list_capture_objects
from bayroute.monitoring.stats import MIN_DRIFT_SAMPLES, Baseline
from bayroute.monitoring.windows import WindowSummary, window_summaries

log = logging.getLogger(__name__)

DRIFT_HORIZON_SECONDS = 3600
MAX_OBJECTS_PER_PASS = 2000
READ_THREADS = 8


@dataclass(frozen=True)
class MonitorConfig:
    bucket: str
    capture_prefix: str
    state_key: str
    window_seconds: int
    threshold: float
    input_size: int
    max_pixels: int
    endpoint: str  # for records whose key names no endpoint folder
    service: str  # the ``service`` dimension of the series over everything: the monitor function's name
    drift_horizon_seconds: int = DRIFT_HORIZON_SECONDS
    min_drift_samples: int = MIN_DRIFT_SAMPLES
    max_objects_per_pass: int = MAX_OBJECTS_PER_PASS

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> MonitorConfig:
        values: dict[str, Any] = {
            "bucket": settings.names.capture_bucket,
            "capture_prefix": settings.prefixes.capture,
            "state_key": settings.monitoring.watermark_key,
            "window_seconds": settings.monitoring.window_seconds,
            "threshold": settings.threshold,
            "input_size": settings.model_input_size,
            "max_pixels": settings.limits.max_image_pixels,
            "endpoint": settings.names.endpoint_name,
            "service": settings.names.monitor_function,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class PassResult:
    objects_read: int
    objects_waiting: int  # new objects left for the next pass (over the per-pass limit)
    tally: ReadTally
    summaries: tuple[WindowSummary, ...]
    # (endpoint, model version), or (None, None) over everything -> feature -> PSI over the drift horizon
    drift: Mapping[tuple[str | None, str | None], Mapping[str, float]] = field(default_factory=dict)
    datums: int = 0
    cursor: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects_read": self.objects_read,
            "objects_waiting": self.objects_waiting,
            **self.tally.to_dict(),
            "windows": len(self.summaries),
            "drift": [
                {"endpoint": endpoint, "model_version": version, "psi": dict(values)}
                for (endpoint, version), values in sorted(
                    self.drift.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")
                )
            ],
            "metrics_published": self.datums,
            "cursor": None if self.cursor is None else self.cursor.isoformat(),
        }


def baselines_from_model(path: Path) -> dict[str, Baseline]:
    """The drift baseline shipped in a model file, by its model version (empty when it ships none)."""
    from bayroute.model.onnx_model import OnnxClassifier

    info = OnnxClassifier(path, intra_op_threads=1, inter_op_threads=1).info
    metadata = info.json_field("baseline")
    if not isinstance(metadata, dict):
        return {}
    return {info.model_version: Baseline.from_metadata(info.model_version, metadata)}


def _series(endpoint: str, version: str) -> str:
    return f"{endpoint}|{version}"


class Monitor:
    def __init__(
        self,
        s3: Any,
        sink: MetricSink,
        config: MonitorConfig,
        *,
        baselines: Mapping[str, Baseline] | None = None,
    ) -> None:
        self._s3 = s3
        self._sink = sink
        self.config = config
        self.baselines = dict(baselines or {})
        self._store = StateStore(s3, config.bucket, config.state_key)

    def run_once(self) -> PassResult:
        config = self.config
        state = self._store.load()
        listed = list_capture_objects(self._s3, config.bucket, config.capture_prefix, state.listing_since)
        fresh = state.new_objects(listed)
        batch, waiting = fresh[: config.max_objects_per_pass], len(fresh) - config.max_objects_per_pass
        tally = ReadTally()
        observations = list(
            read_lines(self._read(batch), input_size=config.input_size, max_pixels=config.max_pixels, tally=tally)
        )
        summaries = window_summaries(
            observations,
            window_seconds=config.window_seconds,
            threshold=config.threshold,
            baselines=self.baselines,
            default_endpoint=config.endpoint,
        )
        datums = [d for s in summaries for d in window_datums(s, config.service)]
        drift = self._update_drift(state, summaries)
        datums.extend(self._drift_datums(drift, summaries))
        if datums:
            self._sink.publish(datums)
        state.mark_read(batch)
        if batch or state.etag is None:
            self._store.save(state)
        result = PassResult(
            objects_read=len(batch),
            objects_waiting=max(waiting, 0),
            tally=tally,
            summaries=tuple(summaries),
            drift=drift,
            datums=len(datums),
            cursor=state.cursor,
        )
        log.info("monitor pass", extra={"result": result.to_dict()})
        return result

    def _read(self, objects: Sequence[CaptureObject]) -> Iterator[tuple[str, Sequence[bytes]]]:
        """The objects' lines, fetched concurrently (one object per record makes GET latency the cost)."""
        if not objects:
            return iter(())
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(objects))) as pool:
            chunks = pool.map(lambda o: next(read_s3_objects(self._s3, self.config.bucket, [o.key])), objects)
            return iter(list(chunks))

    def _update_drift(
        self, state: MonitorState, summaries: Sequence[WindowSummary]
    ) -> dict[tuple[str | None, str | None], dict[str, float]]:
        """Add this pass's bin counts to the state; the PSI over the horizon of each (endpoint, version) that got
        records, and over everything (the largest PSI of each feature among them)."""
        horizon = timedelta(seconds=self.config.drift_horizon_seconds)
        window = timedelta(seconds=self.config.window_seconds)
        latest: dict[tuple[str, str], datetime] = {}
        for summary in summaries:
            if summary.model_version is None or not summary.drift_counts:
                continue
            key = (summary.endpoint or self.config.endpoint, summary.model_version)
            state.add_drift_counts(_series(*key), summary.window, summary.drift_counts)
            latest[key] = max(latest.get(key, summary.window), summary.window)
        drift: dict[tuple[str | None, str | None], dict[str, float]] = {}
        overall: dict[str, float] = {}
        for (endpoint, version), newest in latest.items():
            totals = state.drift_totals(_series(endpoint, version), since=newest + window - horizon)
            values = self.baselines[version].drift(totals, self.config.min_drift_samples)
            if values:
                drift[(endpoint, version)] = values
                for feature, value in values.items():
                    overall[feature] = max(overall.get(feature, 0.0), value)
        if overall:
            drift[(None, None)] = overall
        if latest:
            state.prune_drift(before=max(latest.values()) + window - horizon)
        return drift

    def _drift_datums(
        self, drift: Mapping[tuple[str | None, str | None], Mapping[str, float]], summaries: Sequence[WindowSummary]
    ) -> list[MetricDatum]:
        """Drift metrics, stamped with the newest window of their series in this pass."""
        newest: dict[tuple[str | None, str | None], datetime] = {}
        for summary in summaries:
            key = (summary.endpoint, summary.model_version)
            newest[key] = max(newest.get(key, summary.window), summary.window)
        return [
            datum
            for (endpoint, version), values in drift.items()
            for datum in drift_datums(
                values,
                service=self.config.service,
                endpoint=endpoint,
                model_version=version,
                timestamp=newest[(endpoint, version)],
            )
        ]
