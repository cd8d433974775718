"""The report: its summary numbers, the PNG, and an HTML page that needs nothing outside itself."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from bayroute.monitoring.feedback import Label, join_labels
from bayroute.monitoring.records import ReadTally
from bayroute.monitoring.report import ReportInput, report_window, rolling_drift, summary, write_report
from bayroute.monitoring.stats import Baseline, Bins
from tests.unit.test_monitoring_windows import T0, observation

BASELINE = Baseline(
    "v1",
    {"brightness": Bins((0.4, 0.47, 0.53, 0.6), (20, 20, 20, 20, 20))},
    n=100,
    means={"brightness": 0.5},
)


def observations(n: int, brightness: float, start_seconds: float = 0.0) -> list:
    rng = np.random.default_rng(int(brightness * 100))
    return [
        observation(
            start_seconds + 30 * i,
            float(c),
            "bicycle" if c > 0.8 else "motorcycle",
            brightness=float(b),
            object_key=f"k{start_seconds}-{i}",
        )
        for i, (c, b) in enumerate(zip(rng.uniform(0.5, 1, n), rng.normal(brightness, 0.12, n), strict=True))
    ]


def test_the_report_window_keeps_the_charts_readable() -> None:
    assert report_window([]) == 60
    assert report_window(observations(2, 0.5)) == 60
    day = [observation(0, 0.9), observation(86400, 0.9)]
    assert report_window(day) == 900


def test_rolling_drift_uses_the_latest_records_at_each_window_end() -> None:
    clean, dark = observations(60, 0.5), observations(60, 0.15, start_seconds=1800)
    ends = [T0 + timedelta(seconds=s) for s in (600, 1800, 3600)]
    points = rolling_drift(clean + dark, BASELINE, ends, sample=40)
    assert [end for end, _ in points] == ends[1:]  # 21 records by minute 10: not enough
    assert points[0][1]["brightness"] < 0.25 < points[1][1]["brightness"]


def test_summary_and_files(tmp_path: Path) -> None:
    data = observations(60, 0.5) + observations(60, 0.15, start_seconds=1800)
    tally = ReadTally(files=3, lines=125, records=121, observations=120)
    tally.skipped["not_json"] = 4
    feedback = join_labels(data, [Label("bicycle", object_key=o.object_key) for o in data[:30]])
    alarms = [
        {
            "AlarmName": "bayroute-drift",
            "StateValue": "ALARM",
            "StateReason": "Threshold Crossed: <script>",
            "Namespace": "bayroute",
            "MetricName": "DriftScore",
            "Threshold": 0.25,
        },
        {
            "AlarmName": "bayroute-below-threshold-share",
            "StateValue": "OK",
            "StateReason": "fine",
            "Namespace": "bayroute",
            "MetricName": "BelowThresholdShare",
            "Threshold": 0.2,
        },
    ]
    report = write_report(
        ReportInput(
            observations=data,
            tally=tally,
            threshold=0.95,
            source="test",
            baselines={"v1": BASELINE},
            alarms=alarms,
            feedback=feedback,
            min_drift_samples=40,
        ),
        tmp_path / "out",
        advice={"recommended_threshold": 0.9},
    )
    confidences = [o.confidence for o in data]
    assert report["records"] == 121 and report["skipped_lines"] == 4
    assert report["below_threshold_share"] == pytest.approx(sum(c < 0.95 for c in confidences) / 120, abs=1e-4)
    assert set(report["class_mix"]) == {"bicycle", "motorcycle"}
    assert sum(report["class_mix"].values()) == pytest.approx(1.0, abs=1e-3)
    assert report["drift"]["v1"]["level"] == "significant"
    assert report["live_quality"]["labelled"] == 30
    assert [a["state"] for a in report["alarms"]] == ["ALARM", "OK"]
    png = Path(report["report"]["png"]).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    page = Path(report["report"]["html"]).read_text(encoding="utf-8")
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded is not None and base64.b64decode(embedded.group(1)) == png
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything"
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "bayroute-drift" in page and "recommended_threshold" in page


def test_a_report_of_nothing_still_renders(tmp_path: Path) -> None:
    report = write_report(ReportInput(observations=[], tally=ReadTally(), threshold=0.95, source="empty"), tmp_path)
    assert (report["records"], report["below_threshold_share"], report["class_mix"]) == (0, None, {})
    assert (tmp_path / "report.png").stat().st_size > 0
    assert summary(ReportInput(observations=[], tally=ReadTally(), threshold=0.95, source="x"))["drift"] == {}
