"""End to end on the local embedded default: the real ASL, real handlers, the real endpoint server and
real images, through the inbox folder. Each test asserts the invariant: every file ends in exactly one
terminal state (routed, or dead-lettered with a specific reason)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bayroute.local.folder import InboxFolder
from bayroute.local.runtime import running_stack
from bayroute.local.stack import LocalStack
from tests import hostile
from tests.e2e.inbox import SETTINGS, drop, real_images, wait_for_outcomes

pytestmark = pytest.mark.slow
PER_CLASS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, InboxFolder]]:
    with running_stack(tmp_path_factory.mktemp("site"), SETTINGS) as running:
        yield running


def test_real_images_are_routed_to_their_bays_or_sent_to_people(
    stack: tuple[LocalStack, InboxFolder], shared_dataset: Path
) -> None:
    _, folder = stack
    images = real_images(shared_dataset, PER_CLASS)
    drop(folder, {name: content for name, (_, content) in images.items()})

    outcomes = wait_for_outcomes(folder, set(images))

    routed = {name: o for name, o in outcomes.items() if o["status"] == "routed"}
    for name, outcome in outcomes.items():
        assert outcome["object_key"] == name
        if outcome["status"] == "routed":
            assert outcome["confidence"] >= SETTINGS.threshold
            assert outcome["bay"] == SETTINGS.routing_table[outcome["class"]].bay
            assert outcome["model_version"]
        else:
            assert outcome["reason"] == "threshold_not_met", outcome
    assert len(routed) >= len(images) // 2, f"only {len(routed)} of {len(images)} routed"
    correct = sum(o["class"] == images[name][0] for name, o in routed.items())
    assert correct >= 0.9 * len(routed), f"{correct} of {len(routed)} routed images have the right class"
    print(f"\nrouted {len(routed)} of {len(images)}, {correct} correct; rest dead-lettered below threshold")


def test_bad_files_are_dead_lettered_with_specific_reasons(
    stack: tuple[LocalStack, InboxFolder], shared_dataset: Path
) -> None:
    _, folder = stack
    photo = (shared_dataset / "train" / "bicycle").glob("*.png").__next__().read_bytes()
    files = {
        "empty.png": (b"", "empty_object"),
        "notes.png": (b"driver notes: arrived 9:14\n", "not_an_image"),
        "truncated.jpg": (hostile.truncated_jpeg(), "truncated_image"),
        "bomb.png": (hostile.decompression_bomb(), "too_many_pixels"),
    }
    drop(folder, {name: content for name, (content, _) in files.items()} | {"fine.png": photo})

    outcomes = wait_for_outcomes(folder, set(files) | {"fine.png"})

    assert {name: outcomes[name].get("reason") for name in files} == {name: r for name, (_, r) in files.items()}
    assert all(outcomes[name]["status"] == "dead-lettered" and outcomes[name]["detail"] for name in files)
    assert outcomes["fine.png"]["status"] == "routed" or outcomes["fine.png"]["reason"] == "threshold_not_met"
