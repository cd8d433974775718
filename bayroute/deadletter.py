"""Dead-letter messages: written by the workflow's Catch, and by ingest for objects it rejects; read by one reader.

The workflow's ``SendToDeadLetterQueue`` state sends ``{request, step, error, cause, execution, started_at,
failed_at}`` where ``cause`` is the Lambda error document of the failed task (its ``errorMessage`` is the
WorkflowError's JSON). Ingest rejects objects outside any execution; :func:`dead_letter_message` gives its
messages the same fields and the same kind of ``cause``, plus ``reason``, so :class:`DeadLetterEntry` and
:func:`bayroute.errors.reason_code` read both alike. The ``ObjectDeadLettered`` event's detail is the same
document as the message, as in the workflow's ``AnnounceDeadLetter`` state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bayroute.domain import WorkflowRequest, utc_now
from bayroute.errors import InvalidEvent, WorkflowError, reason_code


def lambda_error_cause(error: WorkflowError) -> str:
    """The ``Cause`` that Step Functions records when a Lambda task raises ``error``: the Lambda error document."""
    return json.dumps({"errorType": type(error).__name__, "errorMessage": str(error)})


def dead_letter_message(
    request: WorkflowRequest,
    *,
    step: str,
    error: WorkflowError,
    execution: str | None = None,
    started_at: str | None = None,
    failed_at: str | None = None,
) -> dict[str, Any]:
    """The dead-letter message (and ``ObjectDeadLettered`` detail) for a failure outside the workflow."""
    failed_at = failed_at or utc_now()
    return {
        "request": request.to_dict()["request"],
        "step": step,
        "error": type(error).__name__,
        "cause": lambda_error_cause(error),
        "reason": error.reason,
        "execution": execution,
        "started_at": started_at or request.received_at or failed_at,
        "failed_at": failed_at,
    }


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead-letter message, read: what failed, where, why (a stable reason code), and when."""

    request: WorkflowRequest
    step: str
    error: str
    cause: str
    reason: str
    detail: str
    execution: str | None
    started_at: str | None
    failed_at: str | None
    model_version: str | None

    @property
    def attempt(self) -> int:
        return self.request.attempt

    @classmethod
    def from_message(cls, body: dict[str, Any] | str) -> DeadLetterEntry:
        """Read a message body (the JSON text or its parsed object) from the workflow or from ingest."""
        if isinstance(body, str):
            text = body
            try:
                body = json.loads(text)
            except ValueError as exc:
                raise InvalidEvent(f"dead-letter message is not JSON: {exc}", got=text[:200]) from exc
        if not isinstance(body, dict):
            raise InvalidEvent("dead-letter message is not a JSON object", got=str(body)[:200])
        request = WorkflowRequest.from_state(body)
        error = str(body.get("error") or "")
        cause = str(body.get("cause") or "")
        reason, detail = reason_code(error, cause)
        return cls(
            request=request,
            step=str(body.get("step") or "unknown"),
            error=error,
            cause=cause,
            reason=reason,
            detail=detail,
            execution=_optional_str(body.get("execution")),
            started_at=_optional_str(body.get("started_at")),
            failed_at=_optional_str(body.get("failed_at")),
            model_version=_optional_str(_error_facts(cause).get("model_version")),
        )

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON-able view for listings and sidecars."""
        return {
            "object": self.request.object.to_dict(),
            "object_key": self.request.object.key,
            "attempt": self.attempt,
            "step": self.step,
            "reason": self.reason,
            "detail": self.detail,
            "error": self.error,
            "execution": self.execution,
            "started_at": self.started_at,
            "failed_at": self.failed_at,
            "model_version": self.model_version,
        }


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _error_facts(cause: str) -> dict[str, Any]:
    """The facts a WorkflowError carried (its JSON message inside the Lambda error document), or {}."""
    try:
        document = json.loads(cause)
        message = document.get("errorMessage", document) if isinstance(document, dict) else None
        inner = json.loads(message) if isinstance(message, str) else message
    except ValueError:
        return {}
    return inner if isinstance(inner, dict) else {}
