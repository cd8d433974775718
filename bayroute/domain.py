"""Domain types shared by every step: what flows through the workflow, as plain JSON-able records.

The state that Step Functions carries between tasks is built from these ``to_dict`` forms:

    {"request":    ObjectRef.to_dict(),          # set by ingest, never changed
     "serialized": {"image": ImagePayload, "input_stats": InputStats},
     "prediction": Prediction.to_dict(),
     "routing":    RoutingDecision.to_dict()}
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bayroute.errors import InvalidEvent


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ObjectRef:
    """One object in the inbox bucket, identified by bucket, key and version (or eTag)."""

    bucket: str
    key: str
    etag: str
    size: int
    version_id: str | None = None

    @property
    def identity(self) -> str:
        return f"s3://{self.bucket}/{self.key}@{self.version_id or self.etag}"

    @property
    def idempotency_key(self) -> str:
        """Stable across duplicate deliveries of the same object; differs when the object is replaced."""
        return hashlib.sha256(self.identity.encode("utf-8")).hexdigest()[:40]

    def execution_name(self, attempt: int = 1) -> str:
        """Execution names are unique per object and attempt (a replay is a new attempt); at most 80 chars."""
        return f"{self.idempotency_key}-{attempt}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectRef:
        try:
            return cls(
                bucket=str(data["bucket"]),
                key=str(data["key"]),
                etag=str(data["etag"]),
                size=int(data["size"]),
                version_id=data.get("version_id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidEvent(f"not an object reference: {exc}", got=str(data)[:200]) from exc


@dataclass(frozen=True)
class WorkflowRequest:
    """The input of one workflow execution."""

    object: ObjectRef
    attempt: int = 1
    received_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {"request": {**self.object.to_dict(), "attempt": self.attempt, "received_at": self.received_at}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WorkflowRequest:
        request = state.get("request") if isinstance(state, dict) else None
        if not isinstance(request, dict):
            raise InvalidEvent("workflow state has no 'request'", got=str(state)[:200])
        return cls(
            object=ObjectRef.from_dict(request),
            attempt=int(request.get("attempt", 1)),
            received_at=str(request.get("received_at", "")),
        )


@dataclass(frozen=True)
class Prediction:
    labels: list[str]
    probabilities: list[float]
    model_version: str
    inference_id: str

    @property
    def top_index(self) -> int:
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    @property
    def top_class(self) -> str:
        return self.labels[self.top_index]

    @property
    def confidence(self) -> float:
        return self.probabilities[self.top_index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "probabilities": self.probabilities,
            "model_version": self.model_version,
            "inference_id": self.inference_id,
            "top_class": self.top_class,
            "confidence": self.confidence,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        try:
            prediction = cls(
                labels=[str(label) for label in data["labels"]],
                probabilities=[float(p) for p in data["probabilities"]],
                model_version=str(data["model_version"]),
                inference_id=str(data["inference_id"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidEvent(f"not a prediction: {exc}", got=str(data)[:200]) from exc
        if not prediction.labels or len(prediction.labels) != len(prediction.probabilities):
            raise InvalidEvent("prediction labels and probabilities differ in length", got=str(data)[:200])
        return prediction


@dataclass(frozen=True)
class RoutingDecision:
    """A confident prediction, routed: what the driver is told and what downstream systems receive."""

    object: ObjectRef
    vehicle_class: str
    confidence: float
    bay: str
    orders: str
    model_version: str
    threshold: float
    inference_id: str
    routed_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "routed",
            "object": self.object.to_dict(),
            "object_key": self.object.key,
            "class": self.vehicle_class,
            "confidence": self.confidence,
            "bay": self.bay,
            "orders": self.orders,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "inference_id": self.inference_id,
            "routed_at": self.routed_at,
        }
