"""The inbox folder follows a replayed object: dead-letter/ → routed/ with its history, crash-safe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bayroute.config import load_settings
from bayroute.errors import EndpointUnavailable
from bayroute.local.folder import PROMOTED_FROM, InboxFolder, sha256_file

SETTINGS = load_settings(env={})


class FakeS3:
    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        return {"ETag": '"e1"', "VersionId": "v1"}


class FakeSqs:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def receive_message(self, **_: Any) -> dict[str, Any]:
        batch, self.bodies = self.bodies, []
        return {"Messages": [{"Body": json.dumps(b), "ReceiptHandle": str(i)} for i, b in enumerate(batch)]}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        return None


def request(key: str) -> dict[str, Any]:
    return {"bucket": SETTINGS.names.inbox_bucket, "key": key, "etag": "e1", "size": 3, "version_id": "v1"}


def dead_lettered(key: str, attempt: int) -> dict[str, Any]:
    error = EndpointUnavailable(f"attempt {attempt}: the endpoint is down")
    return {
        "detail-type": SETTINGS.events.dead_lettered_detail_type,
        "detail": {
            "request": {**request(key), "attempt": attempt},
            "step": "infer",
            "error": "EndpointUnavailable",
            "cause": json.dumps({"errorType": "EndpointUnavailable", "errorMessage": str(error)}),
            "failed_at": f"2026-11-28T16:0{attempt}:00.000Z",
        },
    }


def routed(key: str) -> dict[str, Any]:
    return {
        "detail-type": SETTINGS.events.classified_detail_type,
        "detail": {
            "request": {**request(key), "attempt": 2},
            "class": "bicycle",
            "confidence": 0.99,
            "bay": "near",
            "orders": "near",
            "model_version": "m1",
            "threshold": 0.95,
        },
    }


def folder_with_file(tmp_path: Path, name: str = "x.png") -> tuple[InboxFolder, FakeSqs, list[Path]]:
    sqs = FakeSqs()
    settled: list[Path] = []
    folder = InboxFolder(tmp_path, SETTINGS, FakeS3(), sqs, "url", on_settled=lambda path, _: settled.append(path))
    (folder.inbox / name).write_bytes(b"abc")
    folder.scan_once(), folder.scan_once()
    return folder, sqs, settled


def settle(folder: InboxFolder, sqs: FakeSqs, *events: dict[str, Any]) -> None:
    sqs.bodies = list(events)
    folder.settle_once()


def sidecar(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def test_a_replayed_object_that_routes_moves_from_dead_letter_to_routed_with_its_history(tmp_path: Path) -> None:
    folder, sqs, settled = folder_with_file(tmp_path)
    settle(folder, sqs, dead_lettered("x.png", 1))
    assert (folder.dead_letter / "x.png").is_file()
    assert (folder.counts.routed, folder.counts.dead_lettered) == (0, 1)

    settle(folder, sqs, routed("x.png"))

    assert sorted(p.name for p in folder.dead_letter.iterdir()) == []
    assert (folder.routed / "x.png").read_bytes() == b"abc"
    record = sidecar(folder.routed / "x.png.json")
    assert (record["status"], record["class"], record["file"], record[PROMOTED_FROM]) == (
        "routed",
        "bicycle",
        "x.png",
        "x.png",
    )
    assert record["sha256"] == sha256_file(folder.routed / "x.png")
    [earlier] = record["previous"]
    assert (earlier["status"], earlier["reason"]) == ("dead-lettered", "endpoint_unavailable")
    assert (folder.counts.submitted, folder.counts.routed, folder.counts.dead_lettered) == (1, 1, 0)
    assert settled == [folder.dead_letter / "x.png", folder.routed / "x.png"]


def test_a_replayed_object_that_fails_again_keeps_its_place_and_gains_history(tmp_path: Path) -> None:
    folder, sqs, _ = folder_with_file(tmp_path)
    settle(folder, sqs, dead_lettered("x.png", 1))
    settle(folder, sqs, dead_lettered("x.png", 2))
    settle(folder, sqs, dead_lettered("x.png", 3))

    record = sidecar(folder.dead_letter / "x.png.json")
    assert record["detail"] == "attempt 3: the endpoint is down"
    assert [r["detail"] for r in record["previous"]] == [
        "attempt 1: the endpoint is down",
        "attempt 2: the endpoint is down",
    ]
    assert all("previous" not in r for r in record["previous"])
    assert (folder.counts.routed, folder.counts.dead_lettered) == (0, 1)


def test_a_routed_name_already_taken_gets_a_free_one(tmp_path: Path) -> None:
    folder, sqs, _ = folder_with_file(tmp_path)
    (folder.routed / "x.png").write_bytes(b"another day's x")
    (folder.routed / "x.png.json").write_text("{}")
    settle(folder, sqs, dead_lettered("x.png", 1))
    settle(folder, sqs, routed("x.png"))
    assert (folder.routed / "x.png").read_bytes() == b"another day's x"
    assert (folder.routed / "x.1.png").read_bytes() == b"abc"
    assert sidecar(folder.routed / "x.1.png.json")[PROMOTED_FROM] == "x.png"


def test_an_outcome_for_a_file_someone_took_away_is_dropped(tmp_path: Path) -> None:
    folder, sqs, _ = folder_with_file(tmp_path)
    settle(folder, sqs, dead_lettered("x.png", 1))
    (folder.dead_letter / "x.png").unlink()
    settle(folder, sqs, routed("x.png"))
    assert list(folder.routed.iterdir()) == []


def _interrupted_promotion(tmp_path: Path) -> InboxFolder:
    """The state a crash leaves after the routed sidecar was written and before the file moved."""
    folder, sqs, _ = folder_with_file(tmp_path)
    settle(folder, sqs, dead_lettered("x.png", 1))
    old = sidecar(folder.dead_letter / "x.png.json")
    new = {"status": "routed", "file": "x.png", "sha256": old["sha256"], "previous": [old], PROMOTED_FROM: "x.png"}
    (folder.routed / "x.png.json").write_text(json.dumps(new))
    return folder


def test_recovery_finishes_a_promotion_that_a_crash_interrupted_before_the_move(tmp_path: Path) -> None:
    folder = _interrupted_promotion(tmp_path)
    InboxFolder(tmp_path, SETTINGS, FakeS3(), FakeSqs(), "url").recover()
    assert (folder.routed / "x.png").read_bytes() == b"abc"
    assert list(folder.dead_letter.iterdir()) == []


def test_recovery_removes_the_old_sidecar_a_crash_left_after_the_move(tmp_path: Path) -> None:
    folder = _interrupted_promotion(tmp_path)
    (folder.dead_letter / "x.png").replace(folder.routed / "x.png")
    InboxFolder(tmp_path, SETTINGS, FakeS3(), FakeSqs(), "url").recover()
    assert list(folder.dead_letter.iterdir()) == []
    assert sorted(p.name for p in folder.routed.iterdir()) == ["x.png", "x.png.json"]


def test_recovery_moves_nothing_whose_content_differs(tmp_path: Path) -> None:
    folder = _interrupted_promotion(tmp_path)
    (folder.dead_letter / "x.png").write_bytes(b"a different file with the same name")
    InboxFolder(tmp_path, SETTINGS, FakeS3(), FakeSqs(), "url").recover()
    assert (folder.dead_letter / "x.png").is_file() and (folder.dead_letter / "x.png.json").is_file()
    assert not (folder.routed / "x.png").exists()
