"""One reader for dead-letter messages from the workflow's Catch and from ingest."""

from __future__ import annotations

import json

import pytest

from bayroute.deadletter import DeadLetterEntry, dead_letter_message, lambda_error_cause
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.errors import EmptyObject, InvalidEvent, ThresholdNotMet

REF = ObjectRef("bayroute-inbox", "vans/bike 1.png", "abc123", 2048, version_id="v7")
REQUEST = WorkflowRequest(REF, attempt=2, received_at="2026-11-28T16:00:00.000Z")


def workflow_message(error: str, cause: str, step: str = "threshold") -> dict[str, object]:
    """What the ASL's SendToDeadLetterQueue state sends."""
    return {
        "request": REQUEST.to_dict()["request"],
        "step": step,
        "error": error,
        "cause": cause,
        "execution": "arn:aws:states:us-east-1:123456789012:express:bayroute-workflow:x-2:1",
        "started_at": "2026-11-28T16:00:00.100Z",
        "failed_at": "2026-11-28T16:00:03.900Z",
    }


def test_a_handler_error_from_the_workflow_reads_with_its_reason_and_facts() -> None:
    error = ThresholdNotMet("confidence 0.61 is below 0.95", confidence=0.61, model_version="m-2026-11")
    # Step Functions' Cause for a failed Lambda task: the Lambda error document, as JSON text.
    cause = json.dumps({"errorType": "ThresholdNotMet", "errorMessage": str(error), "stackTrace": ["..."]})
    entry = DeadLetterEntry.from_message(json.dumps(workflow_message("ThresholdNotMet", cause)))
    assert (entry.reason, entry.detail) == ("threshold_not_met", "confidence 0.61 is below 0.95")
    assert (entry.step, entry.error, entry.attempt) == ("threshold", "ThresholdNotMet", 2)
    assert entry.model_version == "m-2026-11"
    assert entry.request.object == REF
    assert (entry.started_at, entry.failed_at) == ("2026-11-28T16:00:00.100Z", "2026-11-28T16:00:03.900Z")


def test_a_service_error_without_a_document_still_has_a_stable_reason() -> None:
    entry = DeadLetterEntry.from_message(workflow_message("States.Timeout", "Task timed out", step="infer"))
    assert (entry.reason, entry.detail, entry.model_version) == ("timeout", "Task timed out", None)


def test_an_ingest_rejection_reads_exactly_like_a_workflow_failure() -> None:
    message = dead_letter_message(
        WorkflowRequest(REF, received_at="2026-11-28T16:00:00.000Z"),
        step="ingest",
        error=EmptyObject("the object is empty (0 bytes)"),
        failed_at="2026-11-28T16:00:00.050Z",
    )
    assert message["reason"] == "empty_object"
    assert message["cause"] == lambda_error_cause(EmptyObject("the object is empty (0 bytes)"))
    entry = DeadLetterEntry.from_message(message)
    assert (entry.reason, entry.detail, entry.step, entry.error) == (
        "empty_object",
        "the object is empty (0 bytes)",
        "ingest",
        "EmptyObject",
    )
    assert entry.execution is None
    assert (entry.started_at, entry.failed_at) == ("2026-11-28T16:00:00.000Z", "2026-11-28T16:00:00.050Z")
    assert entry.to_dict()["object_key"] == "vans/bike 1.png"


@pytest.mark.parametrize("body", ["not json", "[1, 2]", json.dumps({"step": "infer"})])
def test_a_message_that_is_not_a_dead_letter_is_an_invalid_event(body: str) -> None:
    with pytest.raises(InvalidEvent):
        DeadLetterEntry.from_message(body)
