"""Named workflow errors and the stable reason codes that dead-letter entries carry.

Each error's class name is its name in the workflow: a handler that raises ``ThresholdNotMet`` fails its
Lambda invocation with ``errorType: ThresholdNotMet``, which Step Functions uses as the ASL error name for
Retry and Catch. Its message is a JSON document (``reason``, ``detail`` and optional facts), so the
failure's ``Cause`` carries a machine-readable reason to the dead-letter queue.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class WorkflowError(Exception):
    """A failure with a stable reason code. ``transient`` errors are retried by the workflow."""

    reason: ClassVar[str] = "unexpected_error"
    transient: ClassVar[bool] = False

    def __init__(self, detail: str, **facts: Any) -> None:
        self.detail = detail
        self.facts = facts
        super().__init__(json.dumps({"reason": self.reason, "detail": detail, **facts}, default=str))


class InvalidEvent(WorkflowError):
    reason = "invalid_event"


class ObjectMissing(WorkflowError):
    reason = "object_missing"


class TooLarge(WorkflowError):
    reason = "too_large"


class EmptyObject(WorkflowError):
    reason = "empty_object"


class NotAnImage(WorkflowError):
    reason = "not_an_image"


class UnsupportedImageFormat(WorkflowError):
    reason = "unsupported_format"


class TruncatedImage(WorkflowError):
    reason = "truncated_image"


class CorruptImage(WorkflowError):
    reason = "corrupt_image"


class TooManyPixels(WorkflowError):
    """A decompression bomb, or a photo beyond the pixel limit."""

    reason = "too_many_pixels"


class PayloadTooLarge(WorkflowError):
    reason = "payload_too_large"


class EndpointUnavailable(WorkflowError):
    reason = "endpoint_unavailable"
    transient = True


class EndpointThrottled(WorkflowError):
    reason = "endpoint_throttled"
    transient = True


class ModelError(WorkflowError):
    """The endpoint answered, but with an error or an answer that breaks the contract."""

    reason = "model_error"


class ThresholdNotMet(WorkflowError):
    reason = "threshold_not_met"


class UnknownClass(WorkflowError):
    """The model predicted a class that the routing table has no bay for."""

    reason = "unknown_class"


ERRORS: dict[str, type[WorkflowError]] = {
    cls.__name__: cls
    for cls in (
        InvalidEvent,
        ObjectMissing,
        TooLarge,
        EmptyObject,
        NotAnImage,
        UnsupportedImageFormat,
        TruncatedImage,
        CorruptImage,
        TooManyPixels,
        PayloadTooLarge,
        EndpointUnavailable,
        EndpointThrottled,
        ModelError,
        ThresholdNotMet,
        UnknownClass,
    )
}
TRANSIENT_ERROR_NAMES = sorted(name for name, cls in ERRORS.items() if cls.transient)

# Errors raised by Step Functions itself or the Lambda service, not by our handlers.
_SERVICE_REASONS = {
    "States.Timeout": "timeout",
    "States.HeartbeatTimeout": "timeout",
    "States.TaskFailed": "task_failed",
    "States.Runtime": "workflow_runtime_error",
    "States.DataLimitExceeded": "payload_too_large",
}


def reason_code(error: str, cause: str | None = None) -> tuple[str, str]:
    """The stable reason code and a human detail for an ASL error name and its cause.

    The cause of a handler's error is the Lambda error document whose ``errorMessage`` is the
    WorkflowError's JSON; anything else (a service error, a crash) still maps to a stable code.
    """
    detail = cause or error
    document = _json_object(cause)
    if document is not None:
        message = document.get("errorMessage", document)
        inner = _json_object(message) if isinstance(message, str) else message
        if isinstance(inner, dict) and isinstance(inner.get("reason"), str):
            return inner["reason"], str(inner.get("detail", detail))
        if isinstance(message, str):
            detail = message
    if error in ERRORS:
        return ERRORS[error].reason, detail
    if error in _SERVICE_REASONS:
        return _SERVICE_REASONS[error], detail
    if error.startswith("Lambda."):
        return "function_error", detail
    return "unexpected_error", detail


def error_facts(cause: str | None) -> dict[str, Any]:
    """The facts a WorkflowError carried in its cause (e.g. ``class`` and ``confidence`` below the threshold)."""
    document = _json_object(cause)
    message = document.get("errorMessage") if document else None
    inner = _json_object(message) if isinstance(message, str) else None
    return {k: v for k, v in (inner or {}).items() if k not in ("reason", "detail")}


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
