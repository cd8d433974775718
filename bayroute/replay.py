"""The dead-letter queue, read and replayed: ``bayroute dlq list|show|replay`` and the deployed replay function.

Every dead-letter message is read by :class:`bayroute.deadletter.DeadLetterEntry`: the workflow's Catch only
knows the error name and its cause, so the stable reason code is derived from them by
:func:`bayroute.errors.reason_code`, the one function that does so (ingest's own rejections carry the same
kind of cause, plus ``reason``). A message that is not a dead-letter document (an S3 event that the ingest
queue redrove after ingest kept failing on it) is still read, as an ingest failure, so nothing in the queue
is beyond replay.

Reading the queue means receiving its messages, which hides them for a visibility timeout; every command
receives the whole queue first (each message once), then acts, then makes every message it did not delete
visible again. Replay starts one new execution per selected object, ``attempt`` one more than the failed
run's (execution names are unique per object and attempt), and deletes a message only once its new run was
accepted. A message whose start failed, whose object no longer exists, or that cannot be read stays in the
queue and is reported. Re-running a replay is safe: the threshold step keeps one result record per object,
so an object that was routed is never routed (nor announced) twice.

SQS ``StartMessageMoveTask`` does not apply: the DLQ is fed by the workflow and by ingest, not by a source
queue, and Express executions cannot be redriven.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bayroute.adapters.aws import StartedExecution, WorkflowStarter
from bayroute.config import Settings
from bayroute.deadletter import DeadLetterEntry
from bayroute.domain import ObjectRef, WorkflowRequest, utc_now
from bayroute.errors import InvalidEvent, reason_code
from bayroute.steps.ingest import object_ref_from_detail

# Long enough to scan a large queue and start an execution for each selected message; if the process dies
# half-way, the messages it held come back on their own after this.
SCAN_VISIBILITY_SECONDS = 300
# Long polling (any wait > 0) asks every SQS server, so an empty answer means the queue has no visible message.
RECEIVE_WAIT_SECONDS = 1
# A safety bound on one scan: SQS allows 120,000 in-flight messages per queue.
MAX_SCAN = 10_000
RECEIVE_BATCH = 10
UNREADABLE = "unreadable"
INGEST_STEP = "ingest"
LOCAL_REGION = "us-east-1"


class ReplayOutcome(StrEnum):
    """What replay did with one message. Only the first three remove it from the queue."""

    REPLAYED = "replayed"  # a new execution was accepted; the message was deleted
    ALREADY_STARTED = "already_started"  # this attempt's execution exists already (an earlier replay); deleted
    SUPERSEDED = "superseded"  # a newer message of the same object was replayed; deleted
    WOULD_REPLAY = "would_replay"  # --dry-run: nothing changed
    OBJECT_MISSING = "object_missing"  # the object is gone or was replaced: kept, for people to decide
    START_FAILED = "start_failed"  # StartExecution failed: kept, visible again
    UNREADABLE = "unreadable"  # not a dead-letter message: kept
    DEFERRED = "deferred"  # out of time (the replay function's deadline): kept, visible again

    @property
    def removes_message(self) -> bool:
        return self in {ReplayOutcome.REPLAYED, ReplayOutcome.ALREADY_STARTED, ReplayOutcome.SUPERSEDED}


# -- reading messages -------------------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time as an aware datetime (naive means UTC), or None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


_AGE = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhdw])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO 8601 time or date (naive means UTC), or an age such as ``90s``, ``15m``, ``2h``, ``3d``."""
    value = text.strip()
    match = _AGE.match(value)
    if match:
        age = timedelta(**{_AGE_UNITS[match["unit"]]: float(match["amount"])})
        return (now or datetime.now(UTC)) - age
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-28T16:00:00Z, 2026-11-28) nor an age (90s, 15m, 2h, 3d)"
        )
    return parsed


def redriven_event_entry(body: Mapping[str, Any], receive_count: int) -> DeadLetterEntry | None:
    """An S3 "Object Created" event that the ingest queue moved here (ingest failed on it every time), or None."""
    detail = body.get("detail")
    if body.get("source") != "aws.s3" or not isinstance(detail, Mapping):
        return None
    try:
        ref = object_ref_from_detail(detail)
    except InvalidEvent:
        return None
    cause = f"ingest failed on this S3 event {receive_count} times; the ingest queue moved it here"
    reason, detail_text = reason_code("", cause)
    return DeadLetterEntry(
        request=WorkflowRequest(ref, attempt=1, received_at=str(body.get("time") or "")),
        step=INGEST_STEP,
        error="",
        cause=cause,
        reason=reason,
        detail=detail_text,
        execution=None,
        started_at=_optional_str(body.get("time")),
        failed_at=None,
        model_version=None,
    )


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, as received: the SQS envelope and its reading."""

    message_id: str
    receipt_handle: str
    body: str
    sent_at: str | None
    receive_count: int
    entry: DeadLetterEntry | None
    problem: str | None = None  # why the body is not a dead-letter message, when it is not

    @classmethod
    def from_sqs(cls, message: Mapping[str, Any]) -> DeadLetter:
        attributes = message.get("Attributes") or {}
        sent_ms = attributes.get("SentTimestamp")
        sent_at = (
            datetime.fromtimestamp(int(sent_ms) / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if sent_ms
            else None
        )
        receive_count = int(attributes.get("ApproximateReceiveCount", 1))
        body = str(message["Body"])
        entry: DeadLetterEntry | None = None
        problem: str | None = None
        try:
            entry = DeadLetterEntry.from_message(body)
        except InvalidEvent as exc:
            parsed = _json_object(body)
            entry = redriven_event_entry(parsed, receive_count) if parsed is not None else None
            if entry is None:
                problem = exc.detail
        return cls(
            message_id=str(message["MessageId"]),
            receipt_handle=str(message["ReceiptHandle"]),
            body=body,
            sent_at=sent_at,
            receive_count=receive_count,
            entry=entry,
            problem=problem,
        )

    @property
    def reason(self) -> str:
        return self.entry.reason if self.entry is not None else UNREADABLE

    @property
    def object_key(self) -> str | None:
        return self.entry.request.object.key if self.entry is not None else None

    @property
    def failed_at(self) -> datetime | None:
        """When the object last failed (the message's send time when the message does not say)."""
        recorded = parse_time(self.entry.failed_at) if self.entry is not None else None
        return recorded or parse_time(self.sent_at)

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """A JSON-able view: the entry's fields plus the message id; ``full`` adds the cause and the raw body."""
        view: dict[str, Any] = {"message_id": self.message_id, "sent_at": self.sent_at}
        if self.entry is None:
            view.update(reason=UNREADABLE, detail=self.problem)
        else:
            view.update(self.entry.to_dict())
            view["identity"] = self.entry.request.object.identity
        view["receive_count"] = self.receive_count
        if full:
            view["cause"] = self.entry.cause if self.entry is not None else None
            view["body"] = _json_object(self.body) or self.body
        return view


@dataclass(frozen=True)
class Selection:
    """Which messages a command acts on: by reason code, by failure time, at most ``limit`` (oldest first)."""

    reason: str | None = None
    since: datetime | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError("since must be an aware datetime")

    def matches(self, letter: DeadLetter) -> bool:
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.since is not None:
            failed_at = letter.failed_at
            return failed_at is not None and failed_at >= self.since
        return True

    def apply(self, letters: Iterable[DeadLetter]) -> list[DeadLetter]:
        oldest = datetime.max.replace(tzinfo=UTC)
        chosen = sorted((m for m in letters if self.matches(m)), key=lambda m: (m.failed_at or oldest, m.message_id))
        return chosen if self.limit is None else chosen[: self.limit]

    @classmethod
    def from_event(cls, event: Mapping[str, Any], now: datetime | None = None) -> Selection:
        """The replay function's event: ``{"reason"?, "since"?, "limit"?}`` (``since`` as on the command line)."""
        reason, since, limit = event.get("reason"), event.get("since"), event.get("limit")
        if reason is not None and not isinstance(reason, str):
            raise InvalidEvent("'reason' must be a reason code string", got=repr(reason)[:100])
        if since is not None and not isinstance(since, str):
            raise InvalidEvent("'since' must be an ISO 8601 time or an age such as 2h", got=repr(since)[:100])
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidEvent("'limit' must be a positive integer", got=repr(limit)[:100])
        try:
            return cls(reason=reason, since=parse_since(since, now) if since else None, limit=limit)
        except ValueError as exc:
            raise InvalidEvent(str(exc)) from exc


# -- adapters ---------------------------------------------------------------------------------------------


class DeadLetterSource(Protocol):
    def receive_all(self) -> list[DeadLetter]: ...

    def delete(self, letter: DeadLetter) -> None: ...

    def release(self, letters: Sequence[DeadLetter]) -> None: ...


class SqsDeadLetters:
    """The dead-letter queue over SQS: receive it whole (messages stay hidden meanwhile), delete, release."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        *,
        visibility_timeout: int = SCAN_VISIBILITY_SECONDS,
        wait_seconds: int = RECEIVE_WAIT_SECONDS,
        max_messages: int = MAX_SCAN,
    ) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self._visibility_timeout = visibility_timeout
        self._wait_seconds = wait_seconds
        self._max_messages = max_messages

    def receive_all(self) -> list[DeadLetter]:
        """Every visible message, each once (up to ``max_messages``); they stay hidden until released."""
        letters: dict[str, DeadLetter] = {}
        while len(letters) < self._max_messages:
            batch = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(RECEIVE_BATCH, self._max_messages - len(letters)),
                VisibilityTimeout=self._visibility_timeout,
                WaitTimeSeconds=self._wait_seconds,
                AttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                break
            for message in batch:
                letter = DeadLetter.from_sqs(message)
                letters.setdefault(letter.message_id, letter)
        return list(letters.values())

    def delete(self, letter: DeadLetter) -> None:
        self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=letter.receipt_handle)

    def release(self, letters: Sequence[DeadLetter]) -> None:
        """Make the messages visible again now, instead of at the end of their visibility timeout."""
        for start in range(0, len(letters), RECEIVE_BATCH):
            chunk = letters[start : start + RECEIVE_BATCH]
            self._sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)
                ],
            )


class ObjectPresence(Protocol):
    def missing(self, ref: ObjectRef) -> str | None:
        """Why the object can no longer be processed (gone, replaced), or None when it is still there."""
        ...


# S3 answers these when the key (or its bucket) is gone, and 412 when IfMatch fails: the key holds other content.
_GONE_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"}
_REPLACED_CODES = {"PreconditionFailed", "412"}


class S3ObjectPresence:
    """Is the failed object still the inbox's current object? The workflow reads it pinned to the same eTag."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def missing(self, ref: ObjectRef) -> str | None:
        params = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.etag:
            params["IfMatch"] = f'"{ref.etag}"'
        elif ref.version_id:
            params["VersionId"] = ref.version_id
        try:
            self._s3.head_object(**params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _GONE_CODES:
                return f"s3://{ref.bucket}/{ref.key} no longer exists"
            if code in _REPLACED_CODES:
                return f"s3://{ref.bucket}/{ref.key} now holds another object (its own event runs it)"
            raise
        return None


class Starter(Protocol):
    def start(self, request: WorkflowRequest) -> StartedExecution: ...


# -- commands ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """The messages a read-only command selected, out of how many the queue held."""

    selected: list[DeadLetter]
    scanned: int

    def to_dict(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "count": len(self.selected), "messages": [m.to_dict() for m in self.selected]}


def list_dead_letters(queue: DeadLetterSource, selection: Selection) -> Scan:
    """The selected messages, oldest failure first; the queue is left as it was."""
    letters = queue.receive_all()
    try:
        return Scan(selected=selection.apply(letters), scanned=len(letters))
    finally:
        queue.release(letters)


def find_dead_letters(queue: DeadLetterSource, wanted: str) -> Scan:
    """The messages whose message id, object key, object identity or execution is ``wanted``."""
    letters = queue.receive_all()
    try:
        found = [m for m in letters if wanted in _names_of(m)]
        return Scan(selected=Selection().apply(found), scanned=len(letters))
    finally:
        queue.release(letters)


def _names_of(letter: DeadLetter) -> set[str]:
    names = {letter.message_id}
    if letter.entry is not None:
        ref = letter.entry.request.object
        names |= {ref.key, ref.identity, ref.execution_name(letter.entry.attempt)}
        if letter.entry.execution:
            names |= {letter.entry.execution, letter.entry.execution.rsplit(":", 1)[-1]}
    return names


@dataclass(frozen=True)
class ReplayResult:
    letter: DeadLetter
    outcome: ReplayOutcome
    execution: str | None = None  # the new execution's name
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        entry = self.letter.entry
        return {
            "message_id": self.letter.message_id,
            "object_key": self.letter.object_key,
            "identity": entry.request.object.identity if entry is not None else None,
            "reason": self.letter.reason,
            "attempt": entry.attempt if entry is not None else None,
            "outcome": str(self.outcome),
            "execution": self.execution,
            "detail": self.detail,
        }


@dataclass
class ReplayReport:
    dry_run: bool
    scanned: int
    results: list[ReplayResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        tally = {str(outcome): 0 for outcome in ReplayOutcome}
        for result in self.results:
            tally[str(result.outcome)] += 1
        return {name: number for name, number in tally.items() if number}

    @property
    def kept(self) -> list[ReplayResult]:
        """Selected messages that stay in the queue although this was not a dry run."""
        return [r for r in self.results if not r.outcome.removes_message and r.outcome != ReplayOutcome.WOULD_REPLAY]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "selected": len(self.results),
            "counts": self.counts(),
            "results": [result.to_dict() for result in self.results],
        }


class Replayer:
    def __init__(
        self,
        queue: DeadLetterSource,
        workflows: Starter,
        objects: ObjectPresence,
        *,
        clock: Callable[[], str] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._workflows = workflows
        self._objects = objects
        self._clock = clock
        self._monotonic = monotonic

    def replay(self, selection: Selection, *, dry_run: bool = False, deadline: float | None = None) -> ReplayReport:
        """Start the selected objects again; ``deadline`` (a ``monotonic`` time) defers what is left after it.

        Several messages of one object (it failed, was replayed, failed again) give one new run, from the
        newest; the older ones are deleted with it as superseded.
        """
        letters = self._queue.receive_all()
        report = ReplayReport(dry_run=dry_run, scanned=len(letters))
        deleted: set[str] = set()
        try:
            for newest, older in _by_object(selection.apply(letters)):
                results = self._replay_one(newest, older, dry_run=dry_run, deadline=deadline)
                for result in results:
                    if result.outcome.removes_message:
                        deleted.add(result.letter.message_id)
                report.results.extend(results)
        finally:
            self._queue.release([m for m in letters if m.message_id not in deleted])
        return report

    def _replay_one(
        self, letter: DeadLetter, older: list[DeadLetter], *, dry_run: bool, deadline: float | None
    ) -> list[ReplayResult]:
        entry = letter.entry
        if entry is None:
            return [ReplayResult(letter, ReplayOutcome.UNREADABLE, detail=letter.problem)]
        request = WorkflowRequest(entry.request.object, attempt=entry.attempt + 1, received_at=self._clock())
        execution = request.object.execution_name(request.attempt)
        if deadline is not None and self._monotonic() >= deadline:
            return [ReplayResult(m, ReplayOutcome.DEFERRED, detail="out of time") for m in (letter, *older)]
        missing = self._objects.missing(request.object)
        if missing is not None:
            return [ReplayResult(m, ReplayOutcome.OBJECT_MISSING, detail=missing) for m in (letter, *older)]
        if dry_run:
            return [
                ReplayResult(letter, ReplayOutcome.WOULD_REPLAY, execution=execution),
                *(
                    ReplayResult(m, ReplayOutcome.WOULD_REPLAY, detail=f"superseded by {letter.message_id}")
                    for m in older
                ),
            ]
        try:
            started = self._workflows.start(request)
        except Exception as exc:  # any failure to start: the message stays, and the report says why
            detail = f"{type(exc).__name__}: {exc}"
            return [ReplayResult(m, ReplayOutcome.START_FAILED, detail=detail) for m in (letter, *older)]
        outcome = ReplayOutcome.ALREADY_STARTED if started.duplicate else ReplayOutcome.REPLAYED
        results = [ReplayResult(letter, outcome, execution=started.name)]
        results += [
            ReplayResult(m, ReplayOutcome.SUPERSEDED, detail=f"replayed from {letter.message_id}") for m in older
        ]
        return [self._delete(result) for result in results]

    def _delete(self, result: ReplayResult) -> ReplayResult:
        """Delete a replayed message; if that fails it comes back later, and replaying it again is harmless."""
        try:
            self._queue.delete(result.letter)
        except Exception as exc:
            note = f"run accepted, but deleting the message failed ({type(exc).__name__}: {exc}); it will come back"
            return ReplayResult(result.letter, result.outcome, execution=result.execution, detail=note)
        return result


def _by_object(letters: list[DeadLetter]) -> list[tuple[DeadLetter, list[DeadLetter]]]:
    """(newest message, older messages) per object, in the order of each object's first selected message."""
    groups: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        key = letter.entry.request.object.identity if letter.entry is not None else f"message:{letter.message_id}"
        groups.setdefault(key, []).append(letter)
    oldest = datetime.min.replace(tzinfo=UTC)
    ordered = []
    for members in groups.values():
        ranked = sorted(
            members,
            key=lambda m: (m.entry.attempt if m.entry is not None else 0, m.failed_at or oldest),
            reverse=True,
        )
        ordered.append((ranked[0], ranked[1:]))
    return ordered


# -- wiring -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterTarget:
    """Where a command reads the queue and starts executions: the local stack of a folder, or an AWS account."""

    description: str
    sqs: Any
    s3: Any
    stepfunctions: Any
    queue_url: str
    state_machine: str  # ARN, or the name (looked up on first start)
    # SQS short polling (0) may miss messages on AWS; moto answers exactly, so the local stack need not wait.
    receive_wait_seconds: int = RECEIVE_WAIT_SECONDS

    def queue(self) -> SqsDeadLetters:
        return SqsDeadLetters(self.sqs, self.queue_url, wait_seconds=self.receive_wait_seconds)

    def replayer(self) -> Replayer:
        return Replayer(
            self.queue(), WorkflowStarter(self.stepfunctions, self.state_machine), S3ObjectPresence(self.s3)
        )


def local_target(workdir: Path) -> DeadLetterTarget:
    """The stack that ``bayroute up --workdir DIR`` runs; raises StackNotRunning when there is none."""
    from bayroute.local.runtime import read_state

    state = read_state(workdir.resolve())
    session = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=LOCAL_REGION)
    # moto reports its own failures as HTTP 500, which botocore would retry, repeating calls that are not
    # idempotent (a start, a delete): one attempt each, as the handlers' local clients make.
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=state.aws_endpoint_url, config=config)

    return DeadLetterTarget(
        description=f"local stack of {state.workdir} (pid {state.pid})",
        sqs=client("sqs"),
        s3=client("s3"),
        stepfunctions=client("stepfunctions"),
        queue_url=state.dead_letter_queue_url,
        state_machine=state.state_machine_arn,
        receive_wait_seconds=0,
    )


def aws_target(settings: Settings, *, profile: str | None = None, region: str | None = None) -> DeadLetterTarget:
    """The deployed stack, found by the names in the settings, with the profile's credentials."""
    session = boto3.Session(profile_name=profile, region_name=region)
    config = Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=30)
    sqs = session.client("sqs", config=config)
    names = settings.names
    queue_url = str(sqs.get_queue_url(QueueName=names.dead_letter_queue)["QueueUrl"])
    return DeadLetterTarget(
        description=f"AWS {session.region_name or 'default region'} ({profile or 'default credentials'})",
        sqs=sqs,
        s3=session.client("s3", config=config),
        stepfunctions=session.client("stepfunctions", config=config),
        queue_url=queue_url,
        state_machine=names.state_machine,
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
