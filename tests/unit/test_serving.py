import os

import pytest

from bayroute.serving import server_model_threads, usable_cores


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_the_server_model_gets_every_core_but_the_one_the_server_keeps(cores: int, threads: int) -> None:
    assert server_model_threads(cores) == threads


def test_usable_cores_follow_this_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("this platform has no CPU affinity")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert usable_cores() == 3
    assert server_model_threads() == 2
