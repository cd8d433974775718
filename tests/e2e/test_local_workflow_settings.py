"""End to end with settings of its own: each test starts its own local stack (one per process at a time)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from bayroute.local.runtime import running_stack
from tests.e2e.inbox import SETTINGS, drop, real_images, wait_for_outcomes

pytestmark = pytest.mark.slow


def test_below_the_threshold_every_object_goes_to_people(tmp_path: Path, shared_dataset: Path) -> None:
    images = real_images(shared_dataset, 2)
    with running_stack(tmp_path, replace(SETTINGS, threshold=1.0)) as (_, folder):
        drop(folder, {name: content for name, (_, content) in images.items()})
        outcomes = wait_for_outcomes(folder, set(images))
    for outcome in outcomes.values():
        assert outcome["status"] == "dead-lettered" or outcome["confidence"] >= 1.0
    below = [o for o in outcomes.values() if o["status"] == "dead-lettered"]
    assert below and all(o["reason"] == "threshold_not_met" and o["step"] == "threshold" for o in below)


def test_an_unreachable_endpoint_is_retried_then_dead_lettered(tmp_path: Path, shared_dataset: Path) -> None:
    closed = SETTINGS.with_endpoint_url("http://127.0.0.1:9")  # discard port: nothing listens there
    images = real_images(shared_dataset, 1)
    started = time.monotonic()
    with running_stack(tmp_path, closed, start_model_endpoint=False) as (_, folder):
        drop(folder, {name: content for name, (_, content) in images.items()})
        outcomes = wait_for_outcomes(folder, set(images), timeout=60)
    for outcome in outcomes.values():
        assert (outcome["status"], outcome["reason"], outcome["step"]) == (
            "dead-lettered",
            "endpoint_unavailable",
            "infer",
        )
    # The ASL retries 3 times with backoff 1 s, 2 s, 4 s before giving up.
    assert time.monotonic() - started >= 7
