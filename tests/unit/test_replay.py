"""Dead-letter replay logic on in-memory fakes: reading messages, selecting them, replaying and what is kept."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bayroute.deadletter import dead_letter_message, lambda_error_cause
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.errors import EmptyObject, EndpointUnavailable, InvalidEvent, ThresholdNotMet
from bayroute.replay import (
    DeadLetter,
    Replayer,
    ReplayOutcome,
    Selection,
    find_dead_letters,
    list_dead_letters,
    parse_since,
)
from tests.unit.test_steps_fakes import FakeWorkflowStarter

NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
BUCKET = "bayroute-inbox"


def ref(key: str, etag: str = "e1", version: str = "v1") -> ObjectRef:
    return ObjectRef(BUCKET, key, etag, 1234, version_id=version)


def workflow_message(
    obj: ObjectRef, error: Exception, *, attempt: int = 1, failed_at: str = "2026-11-28T15:00:00.000Z"
) -> dict[str, Any]:
    """What the ASL's SendToDeadLetterQueue state sends for a failed Lambda task."""
    cause = json.dumps({"errorType": type(error).__name__, "errorMessage": str(error), "stackTrace": []})
    return {
        "request": WorkflowRequest(obj, attempt=attempt, received_at="2026-11-28T14:59:59.000Z").to_dict()["request"],
        "step": "infer",
        "error": type(error).__name__,
        "cause": cause,
        "execution": f"arn:aws:states:us-east-1:123456789012:express:bayroute-workflow:{obj.execution_name(attempt)}:x",
        "started_at": "2026-11-28T14:59:59.500Z",
        "failed_at": failed_at,
    }


def unavailable(obj: ObjectRef, **kwargs: Any) -> dict[str, Any]:
    return workflow_message(obj, EndpointUnavailable("cannot reach http://127.0.0.1:1: refused"), **kwargs)


@dataclass
class StoredMessage:
    body: str
    sent_ms: int
    visible: bool = True
    receives: int = 0


@dataclass
class FakeDeadLetterQueue:
    """The SQS semantics replay relies on: received messages are hidden until deleted or released."""

    messages: dict[str, StoredMessage] = field(default_factory=dict)
    fail_deletes: bool = False

    def add(self, body: dict[str, Any] | str, sent: datetime = NOW) -> str:
        message_id = f"m{len(self.messages) + 1}"
        text = body if isinstance(body, str) else json.dumps(body)
        self.messages[message_id] = StoredMessage(text, int(sent.timestamp() * 1000))
        return message_id

    def receive_all(self) -> list[DeadLetter]:
        letters = []
        for message_id, stored in self.messages.items():
            if stored.visible:
                stored.visible, stored.receives = False, stored.receives + 1
                letters.append(
                    DeadLetter.from_sqs(
                        {
                            "MessageId": message_id,
                            "ReceiptHandle": f"rh-{message_id}-{stored.receives}",
                            "Body": stored.body,
                            "Attributes": {
                                "SentTimestamp": str(stored.sent_ms),
                                "ApproximateReceiveCount": str(stored.receives),
                            },
                        }
                    )
                )
        return letters

    def delete(self, letter: DeadLetter) -> None:
        if self.fail_deletes:
            raise ConnectionError("the queue is unreachable")
        del self.messages[letter.message_id]

    def release(self, letters: Any) -> None:
        for letter in letters:
            if letter.message_id in self.messages:
                self.messages[letter.message_id].visible = True

    def time_out_visibility(self) -> None:
        """What SQS does once the visibility timeout of the received messages has passed."""
        for stored in self.messages.values():
            stored.visible = True

    def visible(self) -> set[str]:
        return {message_id for message_id, stored in self.messages.items() if stored.visible}


@dataclass
class FakePresence:
    gone: dict[str, str] = field(default_factory=dict)  # object key -> why
    checked: list[str] = field(default_factory=list)

    def missing(self, obj: ObjectRef) -> str | None:
        self.checked.append(obj.key)
        return self.gone.get(obj.key)


@dataclass
class Rig:
    queue: FakeDeadLetterQueue = field(default_factory=FakeDeadLetterQueue)
    starter: FakeWorkflowStarter = field(default_factory=FakeWorkflowStarter)
    presence: FakePresence = field(default_factory=FakePresence)
    monotonic: float = 0.0

    def replayer(self) -> Replayer:
        return Replayer(
            self.queue,
            self.starter,
            self.presence,
            clock=lambda: "2026-11-28T16:00:00.000Z",
            monotonic=lambda: self.monotonic,
        )


# -- reading ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("1w", NOW - timedelta(days=7)),
        ("2026-11-28T15:30:00Z", datetime(2026, 11, 28, 15, 30, tzinfo=UTC)),
        ("2026-11-28T17:30:00+02:00", datetime(2026, 11, 28, 15, 30, tzinfo=UTC)),
        ("2026-11-28T15:30", datetime(2026, 11, 28, 15, 30, tzinfo=UTC)),  # naive means UTC
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
    ],
)
def test_since_reads_times_and_ages(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-5m", "", "2026-13-01"])
def test_since_says_what_it_accepts(text: str) -> None:
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_since(text, now=NOW)


def test_messages_from_the_workflow_from_ingest_and_from_the_ingest_redrive_all_read() -> None:
    queue = FakeDeadLetterQueue()
    queue.add(unavailable(ref("a.png")))
    rejected = dead_letter_message(
        WorkflowRequest(ref("b.png"), received_at="2026-11-28T15:00:00.000Z"), step="ingest", error=EmptyObject("0 B")
    )
    queue.add(rejected)
    s3_event = {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-11-28T15:01:00Z",
        "detail": {"bucket": {"name": BUCKET}, "object": {"key": "c.png", "size": 10, "etag": "e3"}},
    }
    queue.add(s3_event)
    queue.add("{not json")

    letters = {letter.object_key or "?": letter for letter in queue.receive_all()}

    assert (letters["a.png"].reason, letters["a.png"].entry and letters["a.png"].entry.step) == (
        "endpoint_unavailable",
        "infer",
    )
    assert letters["b.png"].reason == "empty_object"
    redriven = letters["c.png"]
    assert redriven.entry is not None
    assert (redriven.entry.step, redriven.reason, redriven.entry.attempt) == ("ingest", "unexpected_error", 1)
    assert "ingest failed on this S3 event 1 times" in redriven.entry.detail
    assert redriven.entry.request.object == ObjectRef(BUCKET, "c.png", "e3", 10)
    unreadable = letters["?"]
    assert (unreadable.entry, unreadable.reason) == (None, "unreadable")
    assert unreadable.problem and "not JSON" in unreadable.problem
    assert unreadable.to_dict()["reason"] == "unreadable"


def test_the_listing_view_carries_the_entry_and_the_envelope() -> None:
    queue = FakeDeadLetterQueue()
    error = ThresholdNotMet("motorcycle 0.61 < 0.95", confidence=0.61, model_version="m-9")
    message = workflow_message(ref("a.png"), error, attempt=2)
    message["cause"] = lambda_error_cause(error)
    queue.add(message)
    [letter] = queue.receive_all()
    view = letter.to_dict(full=True)
    assert {k: view[k] for k in ("message_id", "object_key", "attempt", "reason", "model_version", "step")} == {
        "message_id": "m1",
        "object_key": "a.png",
        "attempt": 2,
        "reason": "threshold_not_met",
        "model_version": "m-9",
        "step": "infer",
    }
    assert view["sent_at"] == "2026-11-28T16:00:00.000Z"
    assert view["body"]["error"] == "ThresholdNotMet" and view["cause"] == message["cause"]
    assert "body" not in letter.to_dict()


def test_selection_filters_by_reason_and_failure_time_oldest_first() -> None:
    queue = FakeDeadLetterQueue()
    queue.add(unavailable(ref("late.png"), failed_at="2026-11-28T15:50:00Z"))
    queue.add(unavailable(ref("early.png"), failed_at="2026-11-28T15:10:00Z"))
    queue.add(unavailable(ref("old.png"), failed_at="2026-11-27T09:00:00Z"))
    queue.add(workflow_message(ref("empty.png"), EmptyObject("0 B"), failed_at="2026-11-28T15:20:00Z"))
    letters = queue.receive_all()

    def keys(selection: Selection) -> list[str | None]:
        return [letter.object_key for letter in selection.apply(letters)]

    assert keys(Selection()) == ["old.png", "early.png", "empty.png", "late.png"]
    assert keys(Selection(reason="endpoint_unavailable")) == ["old.png", "early.png", "late.png"]
    assert keys(Selection(since=parse_since("1h", now=NOW))) == ["early.png", "empty.png", "late.png"]
    assert keys(Selection(reason="endpoint_unavailable", since=parse_since("1h", now=NOW), limit=1)) == ["early.png"]


def test_the_replay_event_is_validated() -> None:
    selection = Selection.from_event({"reason": "timeout", "since": "2h", "limit": 5}, now=NOW)
    assert selection == Selection(reason="timeout", since=NOW - timedelta(hours=2), limit=5)
    assert Selection.from_event({}) == Selection()
    for bad in ({"limit": 0}, {"limit": "5"}, {"limit": True}, {"since": "soon"}, {"since": 5}, {"reason": 3}):
        with pytest.raises(InvalidEvent):
            Selection.from_event(bad)


def test_list_and_show_leave_the_queue_as_it_was() -> None:
    queue = FakeDeadLetterQueue()
    first = queue.add(unavailable(ref("a.png")))
    queue.add(unavailable(ref("b.png"), attempt=2))
    scan = list_dead_letters(queue, Selection(limit=1))
    assert (scan.scanned, len(scan.selected)) == (2, 1)
    assert queue.visible() == {"m1", "m2"}

    assert [m.message_id for m in find_dead_letters(queue, "b.png").selected] == ["m2"]
    assert [m.message_id for m in find_dead_letters(queue, first).selected] == ["m1"]
    assert [m.message_id for m in find_dead_letters(queue, ref("b.png").execution_name(2)).selected] == ["m2"]
    assert find_dead_letters(queue, "nothing.png").selected == []
    assert queue.visible() == {"m1", "m2"}


# -- replaying --------------------------------------------------------------------------------------------


def test_replay_starts_the_next_attempt_and_deletes_only_what_was_accepted() -> None:
    rig = Rig()
    rig.queue.add(unavailable(ref("a.png"), attempt=1))
    rig.queue.add(unavailable(ref("b.png"), attempt=3))

    report = rig.replayer().replay(Selection())

    assert [(r.object.key, r.attempt) for r in rig.starter.started] == [("a.png", 2), ("b.png", 4)]
    assert rig.starter.started[0].received_at == "2026-11-28T16:00:00.000Z"
    assert [(r.outcome, r.execution) for r in report.results] == [
        (ReplayOutcome.REPLAYED, ref("a.png").execution_name(2)),
        (ReplayOutcome.REPLAYED, ref("b.png").execution_name(4)),
    ]
    assert rig.queue.messages == {}
    assert report.counts() == {"replayed": 2} and report.kept == []


def test_a_failed_start_keeps_its_message_visible_and_the_others_still_go() -> None:
    rig = Rig()
    rig.queue.add(unavailable(ref("a.png"), failed_at="2026-11-28T15:00:00Z"))
    rig.queue.add(unavailable(ref("b.png"), failed_at="2026-11-28T15:01:00Z"))
    rig.starter.fail_next = ConnectionError("Step Functions is unreachable")

    report = rig.replayer().replay(Selection())

    assert [str(r.outcome) for r in report.results] == ["start_failed", "replayed"]
    assert report.results[0].detail == "ConnectionError: Step Functions is unreachable"
    assert rig.queue.visible() == {"m1"} and set(rig.queue.messages) == {"m1"}
    assert [r.letter.message_id for r in report.kept] == ["m1"]


def test_a_dry_run_starts_nothing_and_leaves_every_message_visible() -> None:
    rig = Rig()
    rig.queue.add(unavailable(ref("a.png")))
    rig.queue.add(unavailable(ref("gone.png")))
    rig.presence.gone["gone.png"] = "s3://bayroute-inbox/gone.png no longer exists"

    report = rig.replayer().replay(Selection(), dry_run=True)

    assert rig.starter.started == []
    assert rig.queue.visible() == {"m1", "m2"}
    assert [(r.letter.object_key, str(r.outcome)) for r in report.results] == [
        ("a.png", "would_replay"),
        ("gone.png", "object_missing"),
    ]
    assert report.results[0].execution == ref("a.png").execution_name(2)
    assert report.to_dict()["dry_run"] is True


def test_an_object_that_no_longer_exists_is_kept_not_started() -> None:
    rig = Rig()
    rig.queue.add(unavailable(ref("gone.png")))
    rig.presence.gone["gone.png"] = "s3://bayroute-inbox/gone.png no longer exists"

    report = rig.replayer().replay(Selection())

    assert rig.starter.started == []
    [result] = report.results
    assert (result.outcome, result.detail) == (
        ReplayOutcome.OBJECT_MISSING,
        "s3://bayroute-inbox/gone.png no longer exists",
    )
    assert rig.queue.visible() == {"m1"}


def test_an_ingest_rejection_is_replayed_through_the_workflow() -> None:
    rig = Rig()
    rejected = dead_letter_message(WorkflowRequest(ref("big.jpg")), step="ingest", error=EmptyObject("0 B"))
    rig.queue.add(rejected)
    report = rig.replayer().replay(Selection())
    assert [str(r.outcome) for r in report.results] == ["replayed"]
    assert [(r.object, r.attempt) for r in rig.starter.started] == [(ref("big.jpg"), 2)]


def test_replaying_a_message_twice_starts_its_attempt_once() -> None:
    """A replay that died after the start but before the delete: the message comes back, the run exists."""
    rig = Rig()
    rig.queue.add(unavailable(ref("a.png")))
    rig.queue.fail_deletes = True
    first = rig.replayer().replay(Selection())
    assert [str(r.outcome) for r in first.results] == ["replayed"]
    assert "will come back" in (first.results[0].detail or "")
    assert rig.queue.visible() == set()
    rig.queue.time_out_visibility()

    rig.queue.fail_deletes = False
    second = rig.replayer().replay(Selection())
    assert [str(r.outcome) for r in second.results] == ["already_started"]
    assert len(rig.starter.started) == 1 and rig.queue.messages == {}


def test_several_messages_of_one_object_give_one_run_from_the_newest() -> None:
    rig = Rig()
    rig.queue.add(unavailable(ref("a.png"), attempt=1, failed_at="2026-11-28T15:00:00Z"))
    rig.queue.add(unavailable(ref("a.png"), attempt=2, failed_at="2026-11-28T15:05:00Z"))
    rig.queue.add(unavailable(ref("b.png"), attempt=1))
    rig.queue.add(unavailable(ref("a.png", etag="other", version="v2"), attempt=1))  # the same key, another object

    report = rig.replayer().replay(Selection())

    assert sorted((r.object.key, r.object.etag, r.attempt) for r in rig.starter.started) == [
        ("a.png", "e1", 3),
        ("a.png", "other", 2),
        ("b.png", "e1", 2),
    ]
    assert report.counts() == {"replayed": 3, "superseded": 1}
    [superseded] = [r for r in report.results if r.outcome == ReplayOutcome.SUPERSEDED]
    assert superseded.letter.message_id == "m1" and superseded.detail == "replayed from m2"
    assert rig.queue.messages == {}


def test_only_selected_messages_are_touched() -> None:
    rig = Rig()
    rig.queue.add(unavailable(ref("a.png")))
    rig.queue.add(workflow_message(ref("empty.png"), EmptyObject("0 B")))
    rig.queue.add("garbage")

    report = rig.replayer().replay(Selection(reason="endpoint_unavailable"))

    assert [r.letter.object_key for r in report.results] == ["a.png"]
    assert rig.queue.visible() == {"m2", "m3"}
    assert report.scanned == 3


def test_unreadable_messages_are_reported_and_kept() -> None:
    rig = Rig()
    rig.queue.add(json.dumps({"step": "infer"}))
    report = rig.replayer().replay(Selection(reason="unreadable"))
    [result] = report.results
    assert result.outcome == ReplayOutcome.UNREADABLE and result.detail
    assert rig.queue.visible() == {"m1"} and rig.starter.started == []


def test_past_the_deadline_the_rest_is_deferred_and_visible_again() -> None:
    rig = Rig()
    rig.queue.add(unavailable(ref("a.png"), failed_at="2026-11-28T15:00:00Z"))
    rig.queue.add(unavailable(ref("b.png"), failed_at="2026-11-28T15:01:00Z"))
    replayer = rig.replayer()

    def start_then_run_out_of_time(request: WorkflowRequest) -> Any:
        rig.monotonic = 100.0
        return FakeWorkflowStarter.start(rig.starter, request)

    rig.starter.start = start_then_run_out_of_time  # type: ignore[method-assign]
    report = replayer.replay(Selection(), deadline=50.0)

    assert [str(r.outcome) for r in report.results] == ["replayed", "deferred"]
    assert rig.queue.visible() == {"m2"}
