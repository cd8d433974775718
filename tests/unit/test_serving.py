import os

import pytest

from bayroute.serving import WORKERS_VARIABLE, server_model_threads, server_workers, usable_cores


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_the_server_model_gets_every_core_but_the_one_the_server_keeps(cores: int, threads: int) -> None:
    assert server_model_threads(cores) == threads


def test_usable_cores_follow_this_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("this platform has no CPU affinity")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert usable_cores() == 3
    assert server_model_threads() == 2


@pytest.mark.parametrize(
    ("cores", "workers", "threads"), [(2, 1, 1), (2, 2, 1), (8, 2, 3), (8, 4, 1), (16, 4, 3), (3, 2, 1)]
)
def test_each_server_process_gets_its_share_of_the_cores_but_one(cores: int, workers: int, threads: int) -> None:
    assert server_model_threads(cores, workers) == threads


def test_the_server_runs_a_process_per_core_unless_sagemaker_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bayroute.serving.usable_cores", lambda: 6)
    assert server_workers({}) == 6
    assert server_workers({WORKERS_VARIABLE: " "}) == 6
    assert server_workers({WORKERS_VARIABLE: "3"}) == 3


@pytest.mark.parametrize(("value", "message"), [("two", "whole number"), ("0", "at least 1"), ("-2", "at least 1")])
def test_a_bad_worker_count_is_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"{WORKERS_VARIABLE}.*{message}"):
        server_workers({WORKERS_VARIABLE: value})
