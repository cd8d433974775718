"""Dead-letter listing and replay against moto: the SQS queue, S3 objects, Step Functions starts, the CLI on
the AWS path and the replay function."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from bayroute.adapters.aws import WorkflowStarter
from bayroute.commands.dlq import dlq_app
from bayroute.deadletter import dead_letter_message
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.errors import EmptyObject, EndpointUnavailable, InvalidEvent
from bayroute.replay import Replayer, S3ObjectPresence, Selection, SqsDeadLetters
from services.replay import handler as replay_handler
from tests.integration.test_handlers_support import LambdaContextStub, MotoWorld, moto_world

REGION = ["--region", "us-east-1"]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoWorld]:
    with moto_world(monkeypatch) as world:
        replay_handler.replayer.cache_clear()
        yield world
    replay_handler.replayer.cache_clear()


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def stored(world: MotoWorld, key: str, body: bytes) -> ObjectRef:
    answer = world.put(key, body, content_type="image/png")
    return ObjectRef(world.settings.names.inbox_bucket, key, answer["ETag"].strip('"'), len(body))


def dead_letter(world: MotoWorld, obj: ObjectRef, *, attempt: int = 1, error: Exception | None = None) -> None:
    """A message as the workflow's Catch sends it (the cause is the Lambda error document)."""
    error = error or EndpointUnavailable("cannot reach the endpoint")
    cause = json.dumps({"errorType": type(error).__name__, "errorMessage": str(error)})
    body = {
        "request": WorkflowRequest(obj, attempt=attempt, received_at="2026-11-28T16:00:00.000Z").to_dict()["request"],
        "step": "infer",
        "error": type(error).__name__,
        "cause": cause,
        "execution": f"arn:aws:states:us-east-1:123456789012:express:wf:{obj.execution_name(attempt)}:1",
        "started_at": "2026-11-28T16:00:00.100Z",
        "failed_at": "2026-11-28T16:00:07.300Z",
    }
    world.sqs.send_message(QueueUrl=world.dead_letter_url, MessageBody=json.dumps(body))


def queue_depth(world: MotoWorld) -> tuple[int, int]:
    """(visible, in flight) messages of the dead-letter queue."""
    attributes = world.sqs.get_queue_attributes(
        QueueUrl=world.dead_letter_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def replayer(world: MotoWorld) -> Replayer:
    queue = SqsDeadLetters(world.sqs, world.dead_letter_url, wait_seconds=0)
    return Replayer(queue, WorkflowStarter(world.sfn, world.settings.names.state_machine), S3ObjectPresence(world.s3))


def test_the_whole_queue_is_received_once_then_released(world: MotoWorld) -> None:
    obj = stored(world, "a.png", png((1, 2, 3)))
    for attempt in range(1, 24):
        dead_letter(world, obj, attempt=attempt)
    queue = SqsDeadLetters(world.sqs, world.dead_letter_url, wait_seconds=0)

    letters = queue.receive_all()
    assert len({letter.message_id for letter in letters}) == 23
    assert queue_depth(world) == (0, 23)

    queue.release(letters)
    assert queue_depth(world) == (23, 0)
    assert sorted(letter.entry.attempt for letter in queue.receive_all() if letter.entry) == list(range(1, 24))


def test_replay_starts_each_object_again_and_deletes_its_message(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    bike = stored(world, "drivers/bike é 1.png", png((200, 10, 10)))
    dead_letter(world, bike, attempt=1)
    rejected = stored(world, "empty.png", png((0, 0, 0)))
    ingest_message = dead_letter_message(WorkflowRequest(rejected), step="ingest", error=EmptyObject("0 bytes"))
    world.sqs.send_message(QueueUrl=world.dead_letter_url, MessageBody=json.dumps(ingest_message))

    report = replayer(world).replay(Selection())

    assert report.counts() == {"replayed": 2}
    executions = {e["name"]: json.loads(e["input"])["request"] for e in world.executions(machine)}
    assert set(executions) == {bike.execution_name(2), rejected.execution_name(2)}
    assert ObjectRef.from_dict(executions[bike.execution_name(2)]) == bike
    assert executions[bike.execution_name(2)]["attempt"] == 2
    assert queue_depth(world) == (0, 0)


def test_gone_and_replaced_objects_are_kept_with_the_reason(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    gone = stored(world, "gone.png", png((1, 1, 1)))
    world.s3.delete_object(Bucket=gone.bucket, Key=gone.key)
    replaced = stored(world, "replaced.png", png((2, 2, 2)))
    stored(world, "replaced.png", png((3, 3, 3)))
    dead_letter(world, gone)
    dead_letter(world, replaced)

    report = replayer(world).replay(Selection())

    details = {r.letter.object_key: (str(r.outcome), r.detail) for r in report.results}
    assert details == {
        "gone.png": ("object_missing", "s3://bayroute-inbox/gone.png no longer exists"),
        "replaced.png": (
            "object_missing",
            "s3://bayroute-inbox/replaced.png now holds another object (its own event runs it)",
        ),
    }
    assert world.executions(machine) == []
    assert queue_depth(world) == (2, 0)


def test_a_start_that_fails_leaves_the_message_visible(world: MotoWorld) -> None:
    dead_letter(world, stored(world, "a.png", png((1, 2, 3))))  # no state machine exists: the start fails

    report = replayer(world).replay(Selection())

    [result] = report.results
    assert str(result.outcome) == "start_failed"
    assert "no state machine named 'bayroute-workflow'" in (result.detail or "")
    assert queue_depth(world) == (1, 0)


def cli(*args: str) -> Any:
    result = CliRunner().invoke(dlq_app, list(args), catch_exceptions=False)
    return result


def test_the_cli_lists_shows_and_replays_on_aws(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    bike = stored(world, "bike.png", png((200, 10, 10)))
    dead_letter(world, bike)
    dead_letter(world, stored(world, "van.png", png((10, 10, 200))), error=EmptyObject("0 bytes"))

    listed = cli("list", *REGION, "--json")
    assert listed.exit_code == 0, listed.output
    document = json.loads(listed.stdout)
    assert (document["scanned"], document["count"]) == (2, 2)
    assert {m["object_key"]: m["reason"] for m in document["messages"]} == {
        "bike.png": "endpoint_unavailable",
        "van.png": "empty_object",
    }

    shown = cli("show", "bike.png", *REGION, "--json")
    [message] = json.loads(shown.stdout)["messages"]
    assert message["identity"] == bike.identity and message["body"]["error"] == "EndpointUnavailable"
    assert cli("show", "nothing.png", *REGION).exit_code == 1

    dry = cli("replay", *REGION, "--dry-run", "--json")
    assert dry.exit_code == 0 and json.loads(dry.stdout)["counts"] == {"would_replay": 2}
    assert world.executions(machine) == [] and queue_depth(world) == (2, 0)

    replayed = cli("replay", *REGION, "--reason", "endpoint_unavailable")
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1" in replayed.stdout
    assert [e["name"] for e in world.executions(machine)] == [bike.execution_name(2)]
    assert queue_depth(world) == (1, 0)


def test_the_cli_says_what_is_wrong_with_its_options(tmp_path: Path) -> None:
    no_stack = cli("list", "--workdir", str(tmp_path))
    assert no_stack.exit_code == 2 and "no local stack runs in" in no_stack.output
    both = cli("list", "--workdir", str(tmp_path), *REGION)
    assert both.exit_code == 2 and "exclude each other" in both.output
    since = cli("replay", "--workdir", str(tmp_path), "--since", "last week")
    assert since.exit_code == 2 and "neither an ISO 8601 time" in since.output


def test_the_replay_function_replays_what_its_event_selects(world: MotoWorld) -> None:
    machine = world.create_state_machine()
    bike = stored(world, "bike.png", png((200, 10, 10)))
    dead_letter(world, bike)
    dead_letter(world, stored(world, "van.png", png((10, 10, 200))), error=EmptyObject("0 bytes"))

    dry = replay_handler.handler({"dry_run": True}, LambdaContextStub())
    assert dry["counts"] == {"would_replay": 2} and world.executions(machine) == []

    done = replay_handler.handler({"reason": "endpoint_unavailable", "since": "2026-11-28"}, LambdaContextStub())
    assert (done["scanned"], done["counts"]) == (2, {"replayed": 1})
    assert [e["name"] for e in world.executions(machine)] == [bike.execution_name(2)]

    with pytest.raises(InvalidEvent):
        replay_handler.handler({"limit": -1}, LambdaContextStub())
    with pytest.raises(InvalidEvent):
        replay_handler.handler({"dry_run": "yes"}, LambdaContextStub())
