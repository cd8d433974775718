"""Figures of the benchmark suite: medians over repeats with their spread, the machine, the JSON and the table.

Every figure is the median of its repeats; ``spread`` gives the minimum and maximum of the repeats (and the
interquartile range when there are four or more). A ratio names what it is a ratio to in ``reference``, and
both sides were measured side by side in the same run.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bayroute.serving import usable_cores


@dataclass
class Figure:
    key: str
    name: str
    value: float | None
    unit: str
    repeats: int
    spread: dict[str, float]
    goal: str
    met: bool
    reference: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        entry = asdict(self)
        entry.pop("key")
        return entry


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation, as numpy); NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def spread(values: Sequence[float]) -> dict[str, float]:
    """min/max of the repeats, plus the interquartile range from four repeats on."""
    if not values:
        return {}
    result = {"min": round(min(values), 4), "max": round(max(values), 4)}
    if len(values) >= 4:
        q1, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 75])
        result["iqr"] = round(float(q3 - q1), 4)
    return result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def figure(
    key: str,
    name: str,
    repeats: Sequence[float],
    unit: str,
    *,
    goal: str,
    met: bool,
    reference: str | None = None,
    details: dict[str, Any] | None = None,
    digits: int = 3,
) -> Figure:
    """A figure whose value is the median of ``repeats``."""
    value = round(median(repeats), digits) if repeats else None
    return Figure(
        key=key,
        name=name,
        value=value,
        unit=unit,
        repeats=len(repeats),
        spread=spread(list(repeats)),
        goal=goal,
        met=met,
        reference=reference,
        details=details or {},
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(shared_note: str) -> dict[str, Any]:
    """The machine the figures were measured on, and how busy it was."""
    import onnxruntime

    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": sys.version.split()[0],
        "onnxruntime": onnxruntime.__version__,
        "torch": torch_version,
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": _load_average(),
        "shared": shared_note,
    }


def _format_value(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _format_spread(entry: Figure) -> str:
    if not entry.spread:
        return ""
    text = f"{_format_value(entry.spread['min'])}–{_format_value(entry.spread['max'])}"
    return f"{text} (n={entry.repeats})"


def markdown_table(figures: Sequence[Figure], machine: dict[str, Any]) -> str:
    """The README table: one row per figure, then the machine it ran on."""
    lines = [
        "| figure | value | spread (repeats) | goal | met |",
        "| --- | ---: | --- | --- | :---: |",
    ]
    for entry in figures:
        name = entry.name + (f" (vs {entry.reference})" if entry.reference else "")
        met = "yes" if entry.met else "**no**"
        lines.append(
            f"| `{entry.key}`: {name} | {_format_value(entry.value)} {entry.unit} | {_format_spread(entry)} | "
            f"{entry.goal} | {met} |"
        )
    load = machine.get("load_average_at_start")
    lines += [
        "",
        f"Measured {machine['date']} on {machine['cpu_model']}, {machine['usable_cores']} cores, "
        f"Python {machine['python']}, ONNX Runtime {machine['onnxruntime']}"
        + (f", PyTorch {machine['torch']}" if machine.get("torch") else "")
        + (f"; load average at start {load}" if load else "")
        + f". {machine['shared']}",
    ]
    return "\n".join(lines) + "\n"
