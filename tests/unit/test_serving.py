import os
import random
import urllib.parse

import pytest

from bayroute.serving import (
    WORKERS_VARIABLE,
    format_custom_attributes,
    percent_encode,
    server_model_threads,
    server_workers,
    usable_cores,
)


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


@pytest.mark.parametrize("safe", ["", "-._~:/+", "/", "%", "%,="])
def test_percent_encoding_is_urllib_quote_exactly(safe: str) -> None:
    characters = [chr(code) for code in range(128)] + ["é", "ü", "→", "😀"]
    generator = random.Random(safe)
    texts = ["", "%", "%25", "a%b", "100%,ok=1"] + [
        "".join(generator.choice(characters) for _ in range(generator.randint(1, 40))) for _ in range(2000)
    ]
    for text in texts:
        assert percent_encode(text, safe) == urllib.parse.quote(text, safe=safe), text


def test_custom_attributes_are_the_same_however_the_labels_come_and_however_often() -> None:
    first = format_custom_attributes("v,1", ["bi cycle", "motor|cycle"])
    assert first == "model_version=v%2C1,labels=bi%20cycle|motor%7Ccycle"
    assert format_custom_attributes("v,1", ("bi cycle", "motor|cycle")) == first
    assert format_custom_attributes("v,2", ["bi cycle"]) == "model_version=v%2C2,labels=bi%20cycle"
