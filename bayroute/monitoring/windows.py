"""Per-window statistics of observations: requests, confidence, share below threshold, class mix, inputs.

A window is a fixed interval of ``window_seconds`` aligned to the epoch, holding the observations whose
inference time falls in it. Statistics are kept per (window, endpoint, model version), plus one summary per
window over everything (every endpoint and version): the series alarms watch, whatever version serves.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from bayroute.monitoring.records import Observation
from bayroute.monitoring.stats import Baseline, percentile, window_start

# The summary of a window over every endpoint and version has this in place of a version (and of an endpoint).
ALL_VERSIONS = None


@dataclass(frozen=True)
class WindowSummary:
    window: datetime
    window_seconds: int
    endpoint: str | None  # None in the summary over everything
    model_version: str | None  # ALL_VERSIONS in the summary over everything
    requests: int
    scored: int  # observations with a confidence
    confidence_mean: float | None
    confidence_p10: float | None
    confidence_p50: float | None
    below_threshold: int
    class_counts: Mapping[str, int]
    brightness_mean: float | None
    contrast_mean: float | None
    original_megapixels_mean: float | None
    drift_counts: Mapping[str, Sequence[int]] = field(default_factory=dict)

    @property
    def below_threshold_share(self) -> float | None:
        return self.below_threshold / self.scored if self.scored else None

    @property
    def class_mix(self) -> dict[str, float]:
        total = sum(self.class_counts.values())
        return {name: count / total for name, count in sorted(self.class_counts.items())} if total else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.isoformat(),
            "window_seconds": self.window_seconds,
            "endpoint": self.endpoint,
            "model_version": self.model_version,
            "requests": self.requests,
            "scored": self.scored,
            "confidence_mean": self.confidence_mean,
            "confidence_p10": self.confidence_p10,
            "confidence_p50": self.confidence_p50,
            "below_threshold": self.below_threshold,
            "below_threshold_share": self.below_threshold_share,
            "class_mix": self.class_mix,
            "brightness_mean": self.brightness_mean,
            "contrast_mean": self.contrast_mean,
            "original_megapixels_mean": self.original_megapixels_mean,
        }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(
    observations: Sequence[Observation],
    *,
    window: datetime,
    window_seconds: int,
    endpoint: str | None,
    model_version: str | None,
    threshold: float,
    baseline: Baseline | None = None,
) -> WindowSummary:
    """The statistics of ``observations`` (all in one window); drift counts when a baseline is given."""
    confidences = [o.confidence for o in observations if o.confidence is not None]
    bright = [o.brightness for o in observations if o.brightness is not None]
    contr = [o.contrast for o in observations if o.contrast is not None]
    megapixels = [m for o in observations if (m := o.original_megapixels) is not None]
    drift_counts: dict[str, list[int]] = {}
    if baseline is not None:
        drift_counts = baseline.counts({"confidence": confidences, "brightness": bright, "contrast": contr})
    return WindowSummary(
        window=window,
        window_seconds=window_seconds,
        endpoint=endpoint,
        model_version=model_version,
        requests=len(observations),
        scored=len(confidences),
        confidence_mean=_mean(confidences),
        confidence_p10=percentile(confidences, 10) if confidences else None,
        confidence_p50=percentile(confidences, 50) if confidences else None,
        below_threshold=sum(1 for c in confidences if c < threshold),
        class_counts=dict(Counter(o.predicted for o in observations if o.predicted is not None)),
        brightness_mean=_mean(bright),
        contrast_mean=_mean(contr),
        original_megapixels_mean=_mean(megapixels),
        drift_counts=drift_counts,
    )


def window_summaries(
    observations: Iterable[Observation],
    *,
    window_seconds: int,
    threshold: float,
    baselines: Mapping[str, Baseline] | None = None,
    default_endpoint: str | None = None,
) -> list[WindowSummary]:
    """Summaries per (window, endpoint, version) and per window over everything, in time order."""
    baselines = baselines or {}
    groups: dict[tuple[datetime, str | None, str], list[Observation]] = defaultdict(list)
    for observation in observations:
        start = window_start(observation.time, window_seconds)
        groups[(start, observation.endpoint or default_endpoint, observation.model_version)].append(observation)
    summaries = []
    by_window: dict[datetime, list[Observation]] = defaultdict(list)
    for (start, endpoint, version), members in groups.items():
        by_window[start].extend(members)
        summaries.append(
            summarize(
                members,
                window=start,
                window_seconds=window_seconds,
                endpoint=endpoint,
                model_version=version,
                threshold=threshold,
                baseline=baselines.get(version),
            )
        )
    for start, members in by_window.items():
        summaries.append(
            summarize(
                members,
                window=start,
                window_seconds=window_seconds,
                endpoint=None,
                model_version=ALL_VERSIONS,
                threshold=threshold,
            )
        )
    return sorted(summaries, key=lambda s: (s.window, s.endpoint or "", s.model_version or ""))
