"""The bench's table says on what machine, and how fast that machine was, its figures were measured."""

from __future__ import annotations

from typing import Any

import pytest

from bench.figures import figure, markdown_table, run_module, speed_check_ms

MACHINE: dict[str, Any] = {
    "date": "2026-11-29T04:00:00+00:00",
    "cpu_model": "AMD EPYC",
    "usable_cores": 2,
    "python": "3.11.7",
    "onnxruntime": "1.32.0",
    "torch": None,
    "load_average_at_start": [0.5, 0.5, 0.5],
    "shared": "Shared.",
}


def test_the_table_gives_the_machine_speed_at_both_ends_of_the_run() -> None:
    entry = figure("model_latency_p99_ms", "model p99", [0.3, 0.4, 0.5], "ms", goal="≤ 0.5 ms", met=True)
    machine = {**MACHINE, "speed_check_ms_at_start": 41.5, "speed_check_ms_at_end": 97.0}
    table = markdown_table([entry], machine)
    assert "| `model_latency_p99_ms`: model p99 | 0.4 ms |" in table
    assert "took 41.5 ms at the start and 97.0 ms at the end of the run" in table


def test_without_a_speed_check_the_table_says_nothing_about_speed() -> None:
    entry = figure("model_latency_p99_ms", "model p99", [0.4], "ms", goal="≤ 0.5 ms", met=True)
    assert "Machine speed" not in markdown_table([entry], MACHINE)


def test_the_speed_check_times_real_work() -> None:
    assert speed_check_ms() > 0


def test_a_module_run_fresh_gives_its_last_line_as_json() -> None:
    report = run_module("json.tool", ["--compact"], what="json.tool", stdin=b'{"images": [1, 2]}')
    assert report == {"images": [1, 2]}


def test_a_module_that_fails_raises_with_what_it_was_and_its_error() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)the missing module failed: .*No module named"):
        run_module("bench.no_such_module", [], what="the missing module")
