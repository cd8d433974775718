from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bayroute.config import load_settings
from bayroute.errors import TruncatedImage
from bayroute.local.folder import InboxFolder, outcome_record, sha256_file

SETTINGS = load_settings(env={})
REQUEST = {"bucket": "bayroute-inbox", "key": "x.png", "etag": "e1", "size": 3, "version_id": "v1"}


class FakeS3:
    def __init__(self) -> None:
        self.puts: list[dict[str, Any]] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.puts.append({**kwargs, "Body": kwargs["Body"].read()})
        return {"ETag": '"e1"', "VersionId": f"v{len(self.puts)}"}


class FakeSqs:
    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.messages = [{"Body": json.dumps(b), "ReceiptHandle": str(i)} for i, b in enumerate(bodies)]
        self.deleted: list[str] = []

    def receive_message(self, **_: Any) -> dict[str, Any]:
        batch, self.messages = self.messages, []
        return {"Messages": batch}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        self.deleted.append(ReceiptHandle)


def _routed_event(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "detail-type": "VehicleClassified",
        "detail": {
            "request": request,
            "class": "bicycle",
            "confidence": 0.99,
            "bay": "near",
            "orders": "near",
            "model_version": "m1",
            "threshold": 0.95,
        },
    }


def _dead_letter_event(request: dict[str, Any]) -> dict[str, Any]:
    cause = json.dumps({"errorType": "TruncatedImage", "errorMessage": str(TruncatedImage("ends after 1 KB"))})
    return {
        "detail-type": "ObjectDeadLettered",
        "detail": {"request": request, "step": "serialize", "error": "TruncatedImage", "cause": cause},
    }


def test_outcome_records_carry_the_sidecar_fields() -> None:
    routed = outcome_record(_routed_event(REQUEST), SETTINGS)
    assert routed is not None
    assert {k: routed[k] for k in ("status", "object_key", "class", "bay", "model_version")} == {
        "status": "routed",
        "object_key": "x.png",
        "class": "bicycle",
        "bay": "near",
        "model_version": "m1",
    }
    dead = outcome_record(_dead_letter_event(REQUEST), SETTINGS)
    assert dead is not None
    assert (dead["status"], dead["reason"], dead["detail"]) == ("dead-lettered", "truncated_image", "ends after 1 KB")
    assert outcome_record({"detail-type": "Object Created", "detail": {}}, SETTINGS) is None


def _folder(tmp_path: Path, events: list[dict[str, Any]]) -> tuple[InboxFolder, FakeS3, FakeSqs]:
    s3, sqs = FakeS3(), FakeSqs(events)
    return InboxFolder(tmp_path, SETTINGS, s3, sqs, "queue-url"), s3, sqs


def test_a_file_is_submitted_only_once_it_stops_changing(tmp_path: Path) -> None:
    folder, s3, _ = _folder(tmp_path, [])
    (folder.inbox / "x.png").write_bytes(b"abc")
    (folder.inbox / ".hidden.png").write_bytes(b"abc")
    (folder.inbox / "copying.png.part").write_bytes(b"ab")
    assert folder.scan_once() == 0  # first sight
    assert folder.scan_once() == 1
    assert folder.scan_once() == 0  # never twice
    assert [put["Key"] for put in s3.puts] == ["x.png"]
    assert s3.puts[0]["Metadata"]["sha256"] == sha256_file(folder.inbox / "x.png")


def test_an_outcome_writes_the_sidecar_then_moves_the_file(tmp_path: Path) -> None:
    folder, _, _ = _folder(tmp_path, [])
    (folder.inbox / "x.png").write_bytes(b"abc")
    folder.scan_once(), folder.scan_once()
    folder._sqs = FakeSqs([_routed_event(REQUEST), {"not": "an outcome"}])

    assert folder.settle_once() == 2

    assert not (folder.inbox / "x.png").exists()
    assert (folder.routed / "x.png").read_bytes() == b"abc"
    sidecar = json.loads((folder.routed / "x.png.json").read_text())
    assert sidecar["status"] == "routed"
    assert sidecar["sha256"] == sha256_file(folder.routed / "x.png")
    assert (folder.counts.submitted, folder.counts.routed, folder.counts.in_flight) == (1, 1, 0)


def test_a_second_file_of_the_same_name_does_not_overwrite_the_first(tmp_path: Path) -> None:
    folder, _, _ = _folder(tmp_path, [])
    (folder.dead_letter / "x.png").write_bytes(b"old")
    (folder.dead_letter / "x.png.json").write_text("{}")
    (folder.inbox / "x.png").write_bytes(b"new")
    folder.scan_once(), folder.scan_once()
    folder._sqs = FakeSqs([_dead_letter_event(REQUEST)])
    folder.settle_once()
    assert (folder.dead_letter / "x.png").read_bytes() == b"old"
    assert (folder.dead_letter / "x.1.png").read_bytes() == b"new"
    assert json.loads((folder.dead_letter / "x.1.png.json").read_text())["reason"] == "truncated_image"


def test_recovery_finishes_an_interrupted_move_instead_of_submitting_again(tmp_path: Path) -> None:
    folder, s3, _ = _folder(tmp_path, [])
    (folder.inbox / "done.png").write_bytes(b"done")
    (folder.routed / "done.png.json").write_text(
        json.dumps({"status": "routed", "sha256": sha256_file(folder.inbox / "done.png")})
    )
    (folder.inbox / "todo.png").write_bytes(b"todo")
    (folder.routed / "todo.png.json").write_text(json.dumps({"status": "routed", "sha256": "an older file"}))

    folder.recover()
    folder.scan_once(), folder.scan_once()

    assert (folder.routed / "done.png").read_bytes() == b"done"
    assert [put["Key"] for put in s3.puts] == ["todo.png"]
