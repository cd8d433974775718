"""threshold: a confident prediction is routed to its loading bay; anything less is ``ThresholdNotMet``.

Routing publishes one ``VehicleClassified`` event and keeps one result record per object (under
``prefixes.results/<idempotency key>.json`` in the capture bucket), whatever the attempt: a replayed
object that was already routed gets its first decision back and no second event. The record is created
with a conditional write, so the common first attempt costs no read. The record is written
before the event is published and marked once it is, so a failure in between is repaired by the next
attempt (which publishes the same decision) instead of leaving a routed object without its event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from bayroute.config import Settings
from bayroute.domain import ObjectRef, Prediction, RoutingDecision, WorkflowRequest, utc_now
from bayroute.errors import InvalidEvent, ThresholdNotMet, UnknownClass

# Fields of a result record that are not part of the routing decision the step returns.
_RECORD_ONLY = ("request", "probabilities", "published", "event_id")


class ResultStore(Protocol):
    def create_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> bool: ...

    def get_json(self, bucket: str, key: str) -> dict[str, Any] | None: ...

    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None: ...


class Publisher(Protocol):
    def publish(self, detail_type: str, detail: Mapping[str, Any], resources: Any = ()) -> str: ...


def result_key(settings: Settings, ref: ObjectRef) -> str:
    return f"{settings.prefixes.results}/{ref.idempotency_key}.json"


class Threshold:
    def __init__(
        self,
        settings: Settings,
        *,
        results: ResultStore,
        events: Publisher,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self._settings = settings
        self._results = results
        self._events = events
        self._clock = clock

    def run(self, state: dict[str, Any]) -> dict[str, Any]:
        """``{"request", "prediction"}`` → the routing decision; ThresholdNotMet or UnknownClass otherwise."""
        request = WorkflowRequest.from_state(state)
        raw_prediction = state.get("prediction")
        if not isinstance(raw_prediction, dict):
            raise InvalidEvent("workflow state has no 'prediction'", got=str(state)[:200])
        prediction = Prediction.from_dict(raw_prediction)
        decision = self._decide(request.object, prediction)
        bucket, key = self._settings.names.capture_bucket, result_key(self._settings, request.object)
        record: dict[str, Any] = {
            **decision.to_dict(),
            "request": request.to_dict()["request"],
            "probabilities": dict(zip(prediction.labels, prediction.probabilities, strict=True)),
            "published": False,
        }
        # First attempts (nearly all) create the record in one call; a replay finds the first decision there.
        if not self._results.create_json(bucket, key, record):
            existing = self._results.get_json(bucket, key)
            if existing is not None and existing.get("status") == "routed":
                record = existing
            else:
                self._results.put_json(bucket, key, record)
        if not record.get("published"):
            routing = _routing_of(record)
            event_id = self._events.publish(
                self._settings.events.classified_detail_type,
                {**routing, "request": record["request"]},
                resources=[f"arn:aws:s3:::{request.object.bucket}/{request.object.key}"],
            )
            record = {**record, "published": True, "event_id": event_id}
            self._results.put_json(bucket, key, record)
        return _routing_of(record)

    def _decide(self, ref: ObjectRef, prediction: Prediction) -> RoutingDecision:
        threshold = self._settings.threshold
        vehicle_class, confidence = prediction.top_class, prediction.confidence
        facts = {
            "class": vehicle_class,
            "confidence": confidence,
            "threshold": threshold,
            "model_version": prediction.model_version,
            "inference_id": prediction.inference_id,
        }
        if confidence < threshold:
            raise ThresholdNotMet(
                f"{vehicle_class} with confidence {confidence:.4f}, below the threshold {threshold}", **facts
            )
        route = self._settings.routing_table.get(vehicle_class)
        if route is None:
            known = sorted(self._settings.routing_table)
            raise UnknownClass(f"no loading bay for class {vehicle_class!r} (routing table: {known})", **facts)
        return RoutingDecision(
            object=ref,
            vehicle_class=vehicle_class,
            confidence=confidence,
            bay=route.bay,
            orders=route.orders,
            model_version=prediction.model_version,
            threshold=threshold,
            inference_id=prediction.inference_id,
            routed_at=self._clock(),
        )


def _routing_of(record: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name not in _RECORD_ONLY}
