"""Figures of the benchmark suite: medians over repeats with their spread, the machine, the JSON and the table.

Every figure is the median of its repeats; ``spread`` gives the minimum and maximum of the repeats (and the
interquartile range when there are four or more). A ratio names what it is a ratio to in ``reference``, and
both sides were measured side by side in the same run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bayroute.config import REPO_ROOT
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


def run_module(
    module: str,
    args: Sequence[str],
    *,
    what: str,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Run ``python -m module *args`` in a fresh interpreter, in the repository root; its last stdout line, which
    must be JSON. Raises ``RuntimeError`` naming ``what`` with the end of its stderr when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        input=stdin,
        capture_output=True,
        env=None if env is None else dict(env),
        cwd=REPO_ROOT,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU seconds of the processes ``pids`` so far (Linux ``/proc``; this process when empty)."""
    if not pids:
        return time.process_time()
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, the 14th and 15th fields
    return ticks / os.sysconf("SC_CLK_TCK")


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


SPEED_CHECK_TRIES = 5
SPEED_CHECK_CALLS = 5_000


def speed_check_ms() -> float:
    """Milliseconds for a fixed piece of pure-Python work (JSON encoding, as the local stack does per call;
    the median of a few tries). On a shared machine the same code runs up to 2.5 times slower at some hours than
    at others; this says how fast the machine was, so that runs can be compared."""
    document = {"request": {"bucket": "inbox", "key": "yard/a.png", "size": 2048}, "probabilities": [0.25] * 8}
    tries = []
    for _ in range(SPEED_CHECK_TRIES):
        started = time.perf_counter()
        for _ in range(SPEED_CHECK_CALLS):
            json.loads(json.dumps(document))
        tries.append((time.perf_counter() - started) * 1000.0)
    return round(statistics.median(tries), 1)


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
        "speed_check_ms_at_start": speed_check_ms(),
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
    speed = [machine.get(f"speed_check_ms_at_{moment}") for moment in ("start", "end")]
    if all(value is not None for value in speed):
        lines[-1] += (
            f" Machine speed: {SPEED_CHECK_CALLS:,} JSON round trips of a small document took {speed[0]} ms at the"
            f" start and {speed[1]} ms at the end of the run (`bench.figures.speed_check_ms`; lower is faster)."
        )
    return "\n".join(lines) + "\n"
