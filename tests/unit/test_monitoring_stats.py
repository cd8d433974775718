"""Statistics of the monitor: percentiles, windows, drift bins and the population stability index."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from bayroute.monitoring.records import brightness, contrast
from bayroute.monitoring.stats import (
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    Baseline,
    BaselineError,
    Bins,
    drift_level,
    merged_bins,
    percentile,
    psi,
    window_start,
    windows_between,
)
from training import baseline as training_baseline


@pytest.mark.parametrize("q", [0, 10, 25, 50, 90, 100])
def test_percentile_interpolates_between_closest_ranks_like_numpy(q: float) -> None:
    values = [0.91, 0.2, 0.55, 0.99, 0.73, 0.6, 0.05]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_by_hand() -> None:
    # ranks 0..3 of [1, 2, 3, 4]: p10 sits at rank 0.3, p50 at rank 1.5
    assert percentile([4, 1, 3, 2], 10) == pytest.approx(1.3)
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([0.7], 10) == 0.7


def test_percentile_refuses_an_empty_sample_and_a_bad_rank() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_windows_are_aligned_to_the_epoch_and_a_boundary_opens_the_next_window() -> None:
    assert window_start(datetime(2026, 11, 28, 16, 21, 59, 999000, tzinfo=UTC), 60) == datetime(
        2026, 11, 28, 16, 21, tzinfo=UTC
    )
    assert window_start(datetime(2026, 11, 28, 16, 22, tzinfo=UTC), 60) == datetime(2026, 11, 28, 16, 22, tzinfo=UTC)
    assert window_start(datetime(2026, 11, 28, 16, 29, 30, tzinfo=UTC), 300) == datetime(
        2026, 11, 28, 16, 25, tzinfo=UTC
    )


def test_windows_of_other_time_zones_are_the_same_instants() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert window_start(datetime(2026, 11, 28, 18, 21, 30, tzinfo=plus_two), 3600) == datetime(
        2026, 11, 28, 16, tzinfo=UTC
    )


def test_windows_need_aware_times_and_a_positive_length() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_start(datetime(2026, 11, 28, 16, 21), 60)
    with pytest.raises(ValueError, match="positive"):
        window_start(datetime(2026, 11, 28, 16, 21, tzinfo=UTC), 0)


def test_windows_between_lists_every_window_including_empty_ones() -> None:
    first = datetime(2026, 11, 28, 16, 0, 30, tzinfo=UTC)
    last = datetime(2026, 11, 28, 16, 3, 1, tzinfo=UTC)
    assert [w.minute for w in windows_between(first, last, 60)] == [0, 1, 2, 3]


def test_merged_bins_hold_at_least_five_percent_of_the_baseline_each() -> None:
    edges = [i / 10 for i in range(11)]
    counts = [0, 0, 0, 2, 3, 30, 40, 15, 8, 2]  # 100 in all
    bins = merged_bins(edges, counts)
    # 0+0+0+2+3 = 5 closes the first bin at 0.5; 30, 40, 15 each stand; 8 + the trailing 2 close at the open end.
    assert bins.edges == (0.5, 0.6, 0.7, 0.8)
    assert bins.baseline == (5, 30, 40, 15, 10)
    assert sum(bins.baseline) == 100


def test_a_small_remainder_joins_the_last_bin_and_trailing_zeros_need_no_cut() -> None:
    assert merged_bins([0, 1, 2, 3], [50, 48, 2]) == Bins(edges=(1.0,), baseline=(50, 50))
    assert merged_bins([0, 1, 2, 3], [50, 50, 0]) == Bins(edges=(1.0,), baseline=(50, 50))


def test_merged_bins_refuse_malformed_histograms() -> None:
    with pytest.raises(BaselineError, match="len"):
        merged_bins([0, 1], [1, 2])
    with pytest.raises(BaselineError, match="empty"):
        merged_bins([0, 1, 2], [0, 0])


def test_bins_count_an_edge_value_in_the_bin_it_opens_and_ignore_nan() -> None:
    bins = Bins(edges=(0.5, 0.9), baseline=(1, 1, 1))
    assert bins.counts([0.1, 0.5, 0.89, 0.9, 1.0, float("nan")]) == [1, 2, 2]


def test_psi_is_zero_for_the_same_shares_and_matches_a_hand_computation() -> None:
    assert psi([10, 20, 70], [10, 20, 70]) == 0.0
    assert psi([10, 20, 70], [20, 40, 140]) == pytest.approx(0.0, abs=1e-3)  # only the pseudo-counts differ
    # shares with half a pseudo-count per bin
    base = np.array([50.5, 50.5]) / 101
    live = np.array([90.5, 10.5]) / 101
    expected = float(np.sum((live - base) * np.log(live / base)))
    assert psi([50, 50], [90, 10]) == pytest.approx(expected)
    assert expected > PSI_SIGNIFICANT


def test_psi_stays_finite_when_a_bin_is_empty() -> None:
    value = psi([0, 100], [100, 0])
    assert math.isfinite(value) and value > 5


def test_psi_needs_the_same_bins() -> None:
    with pytest.raises(ValueError, match="length"):
        psi([1, 2], [1, 2, 3])


def test_drift_levels_follow_the_usual_psi_marks() -> None:
    assert drift_level(0.05) == "none"
    assert drift_level(PSI_MODERATE) == "moderate"
    assert drift_level(0.2) == "moderate"
    assert drift_level(PSI_SIGNIFICANT) == "significant"


def _histogram(values: np.ndarray, low: float, high: float) -> dict[str, object]:
    counts, edges = np.histogram(values, bins=20, range=(low, high))
    return {"mean": float(values.mean()), "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def test_a_baseline_reports_drift_only_on_enough_samples() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0.5, 0.1, 2000).clip(0, 1)
    baseline = Baseline.from_metadata("v1", {"n": 2000, "brightness": _histogram(reference, 0, 1)})
    assert set(baseline.bins) == {"brightness"}
    assert baseline.means["brightness"] == pytest.approx(0.5, abs=0.01)
    same = baseline.counts({"brightness": rng.normal(0.5, 0.1, 500).clip(0, 1), "unknown": [1.0]})
    darker = baseline.counts({"brightness": rng.normal(0.3, 0.1, 500).clip(0, 1)})
    assert set(same) == {"brightness"}
    assert baseline.drift(same)["brightness"] < PSI_MODERATE
    assert baseline.drift(darker)["brightness"] > PSI_SIGNIFICANT
    assert baseline.drift(darker, min_samples=501) == {}


def test_a_baseline_without_known_features_or_histograms_is_refused() -> None:
    with pytest.raises(BaselineError, match="none of"):
        Baseline.from_metadata("v1", {"n": 3})
    with pytest.raises(BaselineError, match="no histogram"):
        Baseline.from_metadata("v1", {"confidence": {"mean": 0.9}})
    with pytest.raises(BaselineError, match="malformed"):
        Baseline.from_metadata("v1", {"confidence": {"histogram": {"edges": ["x"], "counts": []}}})


def test_the_monitor_measures_inputs_exactly_as_training_built_the_baseline() -> None:
    images = np.random.default_rng(3).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    assert [brightness(i) for i in images] == pytest.approx(training_baseline.brightness(images).tolist())
    assert [contrast(i) for i in images] == pytest.approx(training_baseline.contrast(images).tolist())
