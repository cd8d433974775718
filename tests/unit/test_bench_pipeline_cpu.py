"""The pipeline benchmark's hardware limit: the CPU each process spends per image, and the rate at which that
CPU would fill every usable core."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.pipeline import Phase, _cpu_ceiling, process_cpu_s


def _burst(routed: int, **cpu_s: float) -> Phase:
    return Phase(
        name="burst",
        offered_per_s=None,
        latencies_ms=[],
        steps_ms={},
        submitted=routed,
        routed=routed,
        other_outcomes=0,
        missing=0,
        seconds=3.0,
        handler_ms={},
        put_span_s=0.5,
        cpu_s=cpu_s,
    )


def test_the_ceiling_is_the_usable_cores_over_the_median_cpu_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    bursts = [
        _burst(60, workflow_process=2.4, aws_process=1.8, load_process=0.12),  # 40, 30 and 2 ms per image
        _burst(60, workflow_process=3.0, aws_process=1.5, load_process=0.18),  # 50, 25, 3
        _burst(50, workflow_process=1.5, aws_process=1.4, load_process=0.10),  # 30, 28, 2
    ]
    third = bursts[2].cpu_ms_per_image
    assert third == pytest.approx({"workflow_process": 30.0, "aws_process": 28.0, "load_process": 2.0})
    limit = _cpu_ceiling(bursts)
    assert limit["burst_cpu_ms_per_image"] == {"aws_process": 28.0, "load_process": 2.0, "workflow_process": 40.0}
    assert limit["cpu_ceiling_images_per_s"] == round(2 * 1000.0 / 70.0, 1)
    assert limit["cpu_ceiling_cores"] == 2


def test_bursts_without_cpu_measurements_give_no_ceiling() -> None:
    assert _cpu_ceiling([_burst(60), _burst(60)]) == {}
    assert _burst(0, workflow_process=1.0).cpu_ms_per_image == {}


def test_a_processs_cpu_time_is_read_while_it_runs_and_not_after() -> None:
    busy = "import sys, time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while (spent := process_cpu_s(child.pid)) is not None and spent < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spent is not None and 0.5 <= spent < 5.0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert process_cpu_s(child.pid) is None  # gone
