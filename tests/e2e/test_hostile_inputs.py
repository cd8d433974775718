"""Every hostile input of ``tests/hostile.py`` through the real local stack, through the inbox folder and straight
into the inbox bucket under keys that S3 events URL-encode; plus an object over the size limit and objects
deleted before they are read. Each ends with exactly one outcome: a correct result (routed, or classified and
sent to people below the threshold) or a dead letter with its specific reason; no worker crashes, nothing
disappears. The table it measures is written to ``hostile-inputs.md`` in the test's folder (and printed):
the README's "Hostile and odd inputs" table is a copy."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from bayroute.config import Settings
from bayroute.errors import ERRORS
from bayroute.local.folder import InboxFolder, outcome_record
from bayroute.local.lambda_api import Handler
from bayroute.local.stack import LocalStack
from bayroute.replay import Selection, SqsDeadLetters, list_dead_letters
from tests import hostile
from tests.e2e.inbox import SETTINGS, drop
from tests.e2e.test_faults import OutcomeObserver, terminal_files, wait_until

pytestmark = pytest.mark.slow
MAX_OBJECT_BYTES = 1 << 20  # above every legitimate case (the largest is a ~480 KB 12 MP JPEG)
DELETED_BEFORE_INGEST = "deleted before ingest.png"
DELETED_BEFORE_SERIALIZE = "deleted before serialize.png"
FOLDER_PREFIX = "folder "  # hostile keys that are also valid file names go through the folder too, renamed


@dataclass(frozen=True)
class Case:
    key: str
    description: str
    expected: str  # "ok" or a reason code
    via: str  # "folder" or "bucket"
    step: str | None = None  # where the expected dead letter comes from, when it matters


def _delete_then(handler_name: str, key_of: Any, keys: set[str]) -> Handler:
    """A deployed handler that first deletes the named objects: a delete between the event and the read."""

    def handler(event: Any, context: Any) -> Any:
        from bayroute.adapters.aws import aws_client
        from bayroute.config import load_settings

        module = __import__(f"services.{handler_name}.handler", fromlist=["handler"])
        for key in key_of(event):
            if key in keys:
                aws_client("s3").delete_object(Bucket=load_settings().names.inbox_bucket, Key=key)
        return module.handler(event, context)

    return handler


def _ingest_keys(event: dict[str, Any]) -> list[str]:
    return [json.loads(record["body"])["detail"]["object"]["key"] for record in event.get("Records", [])]


def _serialize_key(event: dict[str, Any]) -> list[str]:
    return [event["request"]["key"]]


@contextmanager
def hostile_stack(workdir: Path, settings: Settings) -> Iterator[tuple[LocalStack, InboxFolder, OutcomeObserver]]:
    """The local stack with the real handlers, two of them preceded by a delete of chosen objects."""
    from bayroute.local.stack import default_handlers

    names = settings.names
    handlers = {name: handler for name, handler in default_handlers(settings).items()}
    handlers[names.ingest_function] = _delete_then("ingest", _ingest_keys, {DELETED_BEFORE_INGEST})
    handlers[names.serialize_function] = _delete_then("serialize", _serialize_key, {DELETED_BEFORE_SERIALIZE})
    with LocalStack(settings, handlers=handlers) as stack:
        assert stack.resources is not None
        observer = OutcomeObserver(stack)
        folder = InboxFolder(
            workdir, stack.settings, stack.client("s3"), stack.client("sqs"), stack.resources.outcomes_queue_url
        )
        folder.start()
        try:
            yield stack, folder, observer
        finally:
            folder.stop()


def _real_images(dataset: Path, count: int) -> list[bytes]:
    paths = sorted((dataset / "train" / "bicycle").glob("*.png"))[:count]
    return [path.read_bytes() for path in paths]


def _is_ok(record: dict[str, Any]) -> bool:
    """Decoded and classified: routed, or below the threshold with the model's class and confidence."""
    if record["status"] == "routed":
        return True
    return record.get("reason") == "threshold_not_met" and record.get("class") is not None


def test_every_hostile_input_gets_a_result_or_a_specific_dead_letter(tmp_path: Path, shared_dataset: Path) -> None:
    settings = replace(SETTINGS, limits=replace(SETTINGS.limits, max_object_bytes=MAX_OBJECT_BYTES))
    photos = _real_images(shared_dataset, 1 + 2 * len(hostile.HOSTILE_KEYS) + 2)
    corpus = hostile.hostile_cases(real_image=photos[0])
    folder_files = {case.filename: case.data for case in corpus}
    cases = [Case(c.filename, c.description, c.expected, "folder") for c in corpus]
    folder_files["oversized.jpg"] = hostile.oversized_object(MAX_OBJECT_BYTES)
    cases.append(
        Case("oversized.jpg", f"a JPEG of {MAX_OBJECT_BYTES + 1} bytes, 1 over the limit", "too_large", "folder")
    )
    bucket_objects: dict[str, bytes] = {}
    for index, key in enumerate(hostile.HOSTILE_KEYS):
        bucket_objects[key] = photos[1 + index]
        cases.append(Case(key, "a real photo under a key that S3 events URL-encode", "ok", "bucket"))
        if "/" not in key:
            folder_files[FOLDER_PREFIX + key] = photos[1 + len(hostile.HOSTILE_KEYS) + index]
            cases.append(
                Case(FOLDER_PREFIX + key, "the same kind of name, as a file in the inbox folder", "ok", "folder")
            )
    for key, step in ((DELETED_BEFORE_INGEST, "ingest"), (DELETED_BEFORE_SERIALIZE, "serialize")):
        bucket_objects[key] = photos[-1]
        cases.append(Case(key, f"a real photo deleted before {step} reads it", "object_missing", "bucket", step))

    with hostile_stack(tmp_path, settings) as (stack, folder, observer):
        assert stack.resources is not None
        s3 = stack.client("s3")
        drop(folder, folder_files)
        for key, body in bucket_objects.items():
            s3.put_object(Bucket=settings.names.inbox_bucket, Key=key, Body=body)

        def outcomes_by_key() -> Counter[str]:
            return Counter(str(e["detail"]["request"]["key"]) for e in observer.drain())

        took = wait_until(
            lambda: outcomes_by_key().keys() >= {c.key for c in cases} and folder.counts.in_flight == 0,
            120,
            lambda: f"no outcome yet for {sorted({c.key for c in cases} - outcomes_by_key().keys())}",
        )
        time.sleep(1.0)  # long enough for a second outcome of any object to show up, were there one
        per_key = outcomes_by_key()
        events = {str(e["detail"]["request"]["key"]): e for e in observer.events}
        dead_letters = list_dead_letters(
            SqsDeadLetters(stack.client("sqs"), stack.resources.dead_letter_queue_url, wait_seconds=0), Selection()
        )
        ingest_queue_depth = stack.client("sqs").get_queue_attributes(
            QueueUrl=stack.resources.ingest_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]

    assert per_key == Counter({c.key for c in cases}), "exactly one outcome per object"
    records = {key: outcome_record(event, settings) for key, event in events.items()}
    files = terminal_files(tmp_path, set(folder_files))
    for name, sidecar in files.items():
        record = records[name]
        assert record is not None
        assert (sidecar["status"], sidecar.get("reason")) == (record["status"], record.get("reason")), name
    rows = []
    for case in cases:
        record = records[case.key]
        assert record is not None
        assert record["object_key"] == case.key  # the real key, never its URL-encoded spelling
        if case.expected == hostile.OK:
            assert _is_ok(record), (case, record)
        else:
            assert (record["status"], record["reason"]) == ("dead-lettered", case.expected), (case, record)
            assert record["detail"], case
        if case.step is not None:
            assert record["step"] == case.step, (case, record)
        rows.append((case, record))

    dead = {key: r for key, r in records.items() if r is not None and r["status"] == "dead-lettered"}
    assert all(r["error"] in ERRORS for r in dead.values()), "every failure is a named error: no worker crashed"
    in_queue = Counter((m.object_key, m.reason) for m in dead_letters.selected)
    assert in_queue == Counter((key, r["reason"]) for key, r in dead.items()), "one DLQ message per dead letter"
    assert ingest_queue_depth == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}

    table = _markdown_table(rows)
    (tmp_path / "hostile-inputs.md").write_text(table, encoding="utf-8")
    routed = sum(r["status"] == "routed" for r in records.values() if r)
    print(f"\n{len(cases)} hostile objects, all terminal {took:.1f} s after the last was submitted: ", end="")
    print(f"routed {routed}, dead-lettered {len(dead)}; table: {tmp_path / 'hostile-inputs.md'}\n{table}")


def _markdown_table(rows: list[tuple[Case, dict[str, Any]]]) -> str:
    lines = [
        "| input | how it arrived | outcome | reason | step | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case, record in rows:
        shown_key = case.key.replace("\t", "\\t").replace("|", "\\|")
        if record["status"] == "routed":
            outcome, reason, step = f"routed: {record['class']} → {record['bay']} bay", "", ""
            detail = f"confidence {record['confidence']:.3f}"
        else:
            outcome, reason, step = "dead-lettered", f"`{record['reason']}`", record.get("step") or ""
            detail = str(record.get("detail") or "").replace("|", "\\|").replace("\n", " ")
            if record["reason"] == "threshold_not_met":
                outcome = f"classified {record.get('class')} ({record.get('confidence', 0):.3f}), to people"
            if len(detail) > 90:
                detail = detail[:87] + "..."
        lines.append(f"| `{shown_key}`: {case.description} | {case.via} | {outcome} | {reason} | {step} | {detail} |")
    return "\n".join(lines) + "\n"
