"""The monitoring report: a summary (JSON-ready), ``report.png`` and a self-contained ``report.html``.

The figure shows confidence over time against the threshold (the original monitor's plot, one dot per
inference), the share below the threshold and the class mix per window, drift (PSI of the latest
``MIN_DRIFT_SAMPLES`` records at each window's end, against the model's baseline), the input statistics per
window against the baseline, live precision and accuracy where labels exist, and the alarm states. The HTML
page embeds the PNG as a data URI and holds every table in the page itself: no file or network access.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.monitoring.feedback import JoinResult, LabelledPrediction, live_quality
from bayroute.monitoring.records import Observation, ReadTally
from bayroute.monitoring.stats import (
    DRIFT_FEATURES,
    MIN_DRIFT_SAMPLES,
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    Baseline,
    drift_level,
    percentile,
)
from bayroute.monitoring.windows import ALL_VERSIONS, WindowSummary, window_summaries

# Report windows: the shortest of these that gives at most MAX_WINDOWS windows over the capture's span.
WINDOW_CHOICES = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
MAX_WINDOWS = 120
PNG_NAME = "report.png"
HTML_NAME = "report.html"


@dataclass(frozen=True)
class ReportInput:
    observations: Sequence[Observation]
    tally: ReadTally
    threshold: float
    source: str
    baselines: Mapping[str, Baseline] = field(default_factory=dict)
    alarms: Sequence[Mapping[str, Any]] = ()  # DescribeAlarms entries
    alarm_history: Sequence[Mapping[str, Any]] = ()
    feedback: JoinResult | None = None
    window_seconds: int | None = None  # None: chosen from the capture's span
    min_drift_samples: int = MIN_DRIFT_SAMPLES


def report_window(observations: Sequence[Observation]) -> int:
    if not observations:
        return WINDOW_CHOICES[0]
    times = [o.time for o in observations]
    span = (max(times) - min(times)).total_seconds()
    return next((w for w in WINDOW_CHOICES if span / w <= MAX_WINDOWS), WINDOW_CHOICES[-1])


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def overall_drift(
    observations: Sequence[Observation], baselines: Mapping[str, Baseline], min_samples: int
) -> dict[str, dict[str, Any]]:
    """PSI of each feature over every record of each version that has a baseline."""
    result: dict[str, dict[str, Any]] = {}
    for version, baseline in baselines.items():
        members = [o for o in observations if o.model_version == version]
        counts = baseline.counts(_feature_values(members))
        psi = baseline.drift(counts, min_samples)
        result[version] = {
            "records": len(members),
            "psi": {k: round(v, 4) for k, v in psi.items()},
            "level": drift_level(max(psi.values())) if psi else None,
            "note": None if psi else f"fewer than {min_samples} records: drift is not measured",
        }
    return result


def _feature_values(observations: Sequence[Observation]) -> dict[str, list[float]]:
    return {
        "confidence": [o.confidence for o in observations if o.confidence is not None],
        "brightness": [o.brightness for o in observations if o.brightness is not None],
        "contrast": [o.contrast for o in observations if o.contrast is not None],
    }


def rolling_drift(
    observations: Sequence[Observation], baseline: Baseline, ends: Sequence[datetime], sample: int
) -> list[tuple[datetime, dict[str, float]]]:
    """At each time in ``ends``, the PSI of the latest ``sample`` records of the baseline's version."""
    members = sorted((o for o in observations if o.model_version == baseline.model_version), key=lambda o: o.time)
    times = [o.time for o in members]
    points = []
    for end in ends:
        upto = bisect.bisect_right(times, end)
        if upto < sample:
            continue
        latest = members[upto - sample : upto]
        points.append((end, baseline.drift(baseline.counts(_feature_values(latest)), sample)))
    return points


def summary(data: ReportInput) -> dict[str, Any]:
    """The report's numbers; ``records``, ``below_threshold_share`` and ``class_mix`` always present."""
    observations = data.observations
    confidences = [o.confidence for o in observations if o.confidence is not None]
    below = sum(1 for c in confidences if c < data.threshold)
    classes = Counter(o.predicted for o in observations if o.predicted is not None)
    total_classes = sum(classes.values())
    window = data.window_seconds or report_window(observations)
    windows = window_summaries(observations, window_seconds=window, threshold=data.threshold)
    feature_values = _feature_values(observations)
    megapixels = [m for o in observations if (m := o.original_megapixels) is not None]
    result: dict[str, Any] = {
        "source": data.source,
        "records": data.tally.records,
        "observations": len(observations),
        **{k: v for k, v in data.tally.to_dict().items() if k not in ("records", "observations")},
        "first": min(o.time for o in observations).isoformat() if observations else None,
        "last": max(o.time for o in observations).isoformat() if observations else None,
        "threshold": data.threshold,
        "below_threshold": below,
        "below_threshold_share": _round(below / len(confidences)) if confidences else None,
        "confidence": {
            "mean": _round(float(np.mean(confidences))) if confidences else None,
            "p10": _round(percentile(confidences, 10)) if confidences else None,
            "p50": _round(percentile(confidences, 50)) if confidences else None,
        },
        "class_mix": {name: round(count / total_classes, 4) for name, count in sorted(classes.items())},
        "model_versions": dict(Counter(o.model_version for o in observations)),
        "endpoints": dict(Counter(o.endpoint or "unknown" for o in observations)),
        "inputs": {
            "brightness_mean": _round(float(np.mean(feature_values["brightness"])))
            if feature_values["brightness"]
            else None,
            "contrast_mean": _round(float(np.mean(feature_values["contrast"]))) if feature_values["contrast"] else None,
            "original_megapixels_mean": _round(float(np.mean(megapixels))) if megapixels else None,
        },
        "drift": overall_drift(observations, data.baselines, data.min_drift_samples),
        "drift_thresholds": {"moderate": PSI_MODERATE, "significant": PSI_SIGNIFICANT},
        "window_seconds": window,
        "windows": [w.to_dict() for w in windows if w.model_version is ALL_VERSIONS],
        "alarms": [
            {
                "name": a.get("AlarmName"),
                "state": a.get("StateValue"),
                "reason": a.get("StateReason"),
                "updated": _isoformat(a.get("StateUpdatedTimestamp")),
                "metric": f"{a.get('Namespace')}/{a.get('MetricName')}",
            }
            for a in data.alarms
        ],
        "alarm_history": list(data.alarm_history),
        "labels": data.feedback.to_dict() if data.feedback else None,
        "live_quality": live_quality(data.feedback.matched, data.threshold) if data.feedback else None,
    }
    return result


def _isoformat(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (None if value is None else str(value))


def render_png(data: ReportInput, report: Mapping[str, Any]) -> bytes:
    """The report figure as PNG bytes (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    observations = sorted(data.observations, key=lambda o: o.time)
    window = int(report["window_seconds"])
    windows = [
        w
        for w in window_summaries(observations, window_seconds=window, threshold=data.threshold)
        if w.model_version is ALL_VERSIONS
    ]
    # A fixed layout: constrained layout would double the rendering time.
    figure = plt.figure(figsize=(14, 17), dpi=90)
    grid = figure.add_gridspec(
        4, 2, height_ratios=[1.3, 1, 1, 1], hspace=0.35, wspace=0.15, left=0.05, right=0.98, top=0.95, bottom=0.03
    )
    figure.suptitle(
        f"bayroute monitoring — {report['observations']} inferences, {report['records']} records "
        f"({report['skipped_lines']} lines skipped) — {data.source}",
        fontsize=12,
    )
    _plot_confidence(figure.add_subplot(grid[0, :]), observations, windows, data.threshold)
    _plot_below_share(figure.add_subplot(grid[1, 0]), windows, data.alarms)
    _plot_class_mix(figure.add_subplot(grid[1, 1]), windows)
    _plot_drift(figure.add_subplot(grid[2, 0]), observations, windows, data.baselines, data.min_drift_samples)
    _plot_inputs(figure.add_subplot(grid[2, 1]), windows, data.baselines)
    _plot_live_precision(figure.add_subplot(grid[3, 0]), data.feedback, data.threshold)
    _plot_alarms(figure.add_subplot(grid[3, 1]), report["alarms"])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _time_axis(axis: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _empty(axis: Any, title: str, text: str) -> None:
    axis.set_title(title)
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, color="gray")
    axis.set_xticks([])
    axis.set_yticks([])


def _plot_confidence(
    axis: Any, observations: Sequence[Observation], windows: Sequence[WindowSummary], t: float
) -> None:
    scored = [o for o in observations if o.confidence is not None]
    if not scored:
        _empty(axis, "Top-1 confidence over time", "no classification outputs in the capture")
        return
    times = [o.time for o in scored]
    values = np.array([o.confidence for o in scored])
    below = values < t
    axis.scatter(np.array(times)[~below], values[~below], s=9, color="tab:green", alpha=0.6, label="routed")
    axis.scatter(np.array(times)[below], values[below], s=9, color="tab:red", alpha=0.7, label="below threshold")
    with_values = [w for w in windows if w.confidence_p50 is not None]
    if with_values:
        axis.plot(
            [w.window for w in with_values],
            [w.confidence_p50 for w in with_values],
            color="black",
            lw=1,
            label="p50 per window",
        )
        axis.plot(
            [w.window for w in with_values],
            [w.confidence_p10 for w in with_values],
            color="gray",
            lw=1,
            ls=":",
            label="p10 per window",
        )
    axis.axhline(t, color="tab:red", ls="--", lw=1.2, label=f"threshold {t:g}")
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("top-1 probability")
    axis.set_title("Top-1 confidence over time against the routing threshold")
    axis.legend(loc="lower left", fontsize=8, ncols=5)
    _time_axis(axis)


def _plot_below_share(axis: Any, windows: Sequence[WindowSummary], alarms: Sequence[Mapping[str, Any]]) -> None:
    shown = [w for w in windows if w.below_threshold_share is not None]
    if not shown:
        _empty(axis, "Share below threshold", "no classification outputs")
        return
    width = shown[0].window_seconds / 86400 * 0.9
    axis.bar(
        [w.window for w in shown],
        [w.below_threshold_share for w in shown],
        width=width,
        align="edge",
        color="tab:orange",
    )
    for alarm in alarms:
        if alarm.get("MetricName") == "BelowThresholdShare":
            axis.axhline(float(alarm["Threshold"]), color="tab:red", ls="--", lw=1, label=f"alarm {alarm['AlarmName']}")
            axis.legend(fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_title(f"Share below threshold per {shown[0].window_seconds // 60} min window")
    _time_axis(axis)


def _plot_class_mix(axis: Any, windows: Sequence[WindowSummary]) -> None:
    shown = [w for w in windows if w.class_counts]
    if not shown:
        _empty(axis, "Class mix", "no predicted classes")
        return
    names = sorted({name for w in shown for name in w.class_counts})
    width = shown[0].window_seconds / 86400 * 0.9
    bottom = np.zeros(len(shown))
    for name in names:
        shares = np.array([w.class_mix.get(name, 0.0) for w in shown])
        axis.bar([w.window for w in shown], shares, width=width, bottom=bottom, align="edge", label=name)
        bottom += shares
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8, loc="lower left")
    axis.set_title("Predicted class mix per window")
    _time_axis(axis)


def _plot_drift(
    axis: Any,
    observations: Sequence[Observation],
    windows: Sequence[WindowSummary],
    baselines: Mapping[str, Baseline],
    sample: int,
) -> None:
    title = f"Drift: PSI of the latest {sample} records vs the model's baseline"
    if not baselines:
        _empty(axis, title, "no baseline for these model versions")
        return
    ends = [w.window + timedelta(seconds=w.window_seconds) for w in windows]
    plotted = False
    for version, baseline in baselines.items():
        points = rolling_drift(observations, baseline, ends, sample)
        for feature in DRIFT_FEATURES:
            series = [(end, values[feature]) for end, values in points if feature in values]
            if series:
                axis.plot(*zip(*series, strict=True), marker=".", label=f"{feature} ({version})")
                plotted = True
    if not plotted:
        _empty(axis, title, f"fewer than {sample} records of a version with a baseline")
        return
    axis.axhline(PSI_MODERATE, color="tab:orange", ls="--", lw=1, label=f"moderate {PSI_MODERATE}")
    axis.axhline(PSI_SIGNIFICANT, color="tab:red", ls="--", lw=1, label=f"significant {PSI_SIGNIFICANT}")
    axis.set_yscale("symlog", linthresh=0.1)
    axis.legend(fontsize=7)
    axis.set_title(title)
    _time_axis(axis)


def _plot_inputs(axis: Any, windows: Sequence[WindowSummary], baselines: Mapping[str, Baseline]) -> None:
    shown = [w for w in windows if w.brightness_mean is not None]
    if not shown:
        _empty(axis, "Input statistics", "no decodable image inputs")
        return
    for feature, colour in (("brightness", "tab:blue"), ("contrast", "tab:purple")):
        values = [w.brightness_mean if feature == "brightness" else w.contrast_mean for w in shown]
        axis.plot([w.window for w in shown], values, marker=".", color=colour, label=feature)
        for version, baseline in baselines.items():
            if feature in baseline.means:
                axis.axhline(
                    baseline.means[feature], color=colour, ls="--", lw=1, label=f"{feature} baseline ({version})"
                )
    axis.set_ylim(0, 1)
    axis.set_title("Input brightness and contrast per window (means)")
    axis.legend(fontsize=8)
    _time_axis(axis)


def _plot_live_precision(axis: Any, feedback: JoinResult | None, threshold: float) -> None:
    title = "Live precision (routed) and accuracy, from labels"
    if feedback is None or not feedback.matched:
        _empty(axis, title, "no labels joined to these inferences")
        return
    ordered: list[LabelledPrediction] = sorted(feedback.matched, key=lambda m: m.observation.time)
    times, precision, accuracy = [], [], []
    routed = correct_routed = correct = 0
    for i, item in enumerate(ordered, start=1):
        correct += item.correct
        if item.confidence >= threshold:
            routed += 1
            correct_routed += item.correct
        times.append(item.observation.time)
        accuracy.append(correct / i)
        precision.append(correct_routed / routed if routed else np.nan)
    axis.plot(times, precision, label="precision among routed (cumulative)")
    axis.plot(times, accuracy, label="accuracy (cumulative)")
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=8, loc="lower left")
    axis.set_title(f"{title}: {len(ordered)} labelled")
    _time_axis(axis)


def _plot_alarms(axis: Any, alarms: Sequence[Mapping[str, Any]]) -> None:
    axis.set_title("Alarm states")
    axis.axis("off")
    if not alarms:
        axis.text(0.5, 0.5, "no alarms known to this report", ha="center", va="center", color="gray")
        return
    colours = {"ALARM": "tab:red", "OK": "tab:green", "INSUFFICIENT_DATA": "gray"}
    for i, alarm in enumerate(alarms):
        y = 0.92 - i * 0.11
        axis.text(0.0, y, str(alarm["state"]), color=colours.get(str(alarm["state"]), "black"), fontweight="bold")
        axis.text(0.32, y, f"{alarm['name']}  ({alarm['metric']})", fontsize=9)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Mapping[str, Any], png: bytes, advice: Mapping[str, Any] | None = None) -> str:
    """A self-contained page: the figure as a data URI, the numbers as tables, no external resources."""
    image = base64.b64encode(png).decode("ascii")
    facts = [
        ("source", report["source"]),
        ("records", report["records"]),
        ("inferences", report["observations"]),
        ("lines skipped", f"{report['skipped_lines']} {report['skipped_by_reason'] or ''}"),
        ("outputs without a classification", report["outputs_unrecognized"]),
        ("from / to", f"{report['first']} — {report['last']}"),
        ("threshold", report["threshold"]),
        ("below threshold", f"{report['below_threshold']} ({report['below_threshold_share']})"),
        ("confidence mean / p10 / p50", " / ".join(str(report["confidence"][k]) for k in ("mean", "p10", "p50"))),
        ("class mix", report["class_mix"]),
        ("model versions", report["model_versions"]),
        ("inputs", report["inputs"]),
    ]
    sections = [
        "<h2>Summary</h2>",
        _table(facts, ("", "")),
        "<h2>Alarms</h2>",
        _table(
            [(a["name"], a["state"], a["updated"], a["reason"]) for a in report["alarms"]],
            ("alarm", "state", "since", "reason"),
        )
        if report["alarms"]
        else "<p>No alarms known to this report.</p>",
    ]
    if report["alarm_history"]:
        sections += [
            "<h3>State changes</h3>",
            _table(
                [
                    (h.get("changed_at"), h.get("alarm_name"), h.get("old_state"), h.get("new_state"), h.get("reason"))
                    for h in report["alarm_history"]
                ],
                ("when", "alarm", "from", "to", "reason"),
            ),
        ]
    drift_rows = [(v, d["records"], d["psi"], d["level"], d["note"]) for v, d in report["drift"].items()]
    sections += [
        "<h2>Drift against the model's baseline</h2>",
        f"<p>Population stability index per feature; {PSI_MODERATE} and above is a moderate shift, "
        f"{PSI_SIGNIFICANT} and above a significant one.</p>",
        _table(drift_rows, ("model version", "records", "PSI", "level", "note"))
        if drift_rows
        else "<p>No baseline.</p>",
    ]
    if report["live_quality"]:
        quality = report["live_quality"]
        sections += ["<h2>Ground truth</h2>", _table(list({**report["labels"], **quality}.items()), ("", ""))]
    if advice:
        sections += ["<h2>Threshold advice</h2>", _table(list(advice.items()), ("", ""))]
    window_rows = [
        (
            w["window"],
            w["requests"],
            w["confidence_mean"],
            w["confidence_p10"],
            w["confidence_p50"],
            w["below_threshold_share"],
            w["class_mix"],
        )
        for w in report["windows"]
    ]
    sections += [
        f"<h2>Windows of {report['window_seconds']} s</h2>",
        _table(window_rows, ("window", "requests", "confidence mean", "p10", "p50", "below threshold", "class mix")),
    ]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>bayroute monitoring report</title><style>{style}</style></head><body>"
        "<h1>bayroute monitoring report</h1>"
        f'<img alt="monitoring charts" src="data:image/png;base64,{image}">' + "".join(sections) + "</body></html>\n"
    )


def write_report(data: ReportInput, out: Path, advice: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out/report.png`` and ``out/report.html``; returns the summary with their paths."""
    out.mkdir(parents=True, exist_ok=True)
    report = summary(data)
    png = render_png(data, report)
    (out / PNG_NAME).write_bytes(png)
    (out / HTML_NAME).write_text(render_html(report, png, advice), encoding="utf-8")
    report["report"] = {"png": str(out / PNG_NAME), "html": str(out / HTML_NAME)}
    return report
