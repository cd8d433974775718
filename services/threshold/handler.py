"""threshold: a workflow task. ``{"request", "prediction"}`` → the routing decision and a ``VehicleClassified`` event.

Below the threshold it raises ``ThresholdNotMet`` (a class without a bay: ``UnknownClass``); the workflow
dead-letters the object with that reason.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from bayroute.adapters.aws import EventPublisher, ObjectStore, aws_client, per_environment, s3_client
from bayroute.config import load_settings
from bayroute.errors import WorkflowError
from bayroute.steps.threshold import Threshold
from services import count, tracer_for

SERVICE = "bayroute-threshold"
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace="bayroute", service=SERVICE)


@per_environment
def threshold() -> Threshold:
    settings = load_settings()
    events = EventPublisher(aws_client("events"), bus=settings.names.event_bus, source=settings.events.source)
    return Threshold(settings, results=ObjectStore(s3_client()), events=events)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        routing = threshold().run(event)
    except WorkflowError as error:
        count(metrics, "NotRouted")
        logger.warning("not routed", extra={"reason": error.reason, "detail": error.detail, "facts": error.facts})
        raise
    count(metrics, "Routed")
    metrics.add_metadata(key="bay", value=routing["bay"])
    logger.info("routed", extra={"object_key": routing["object_key"], "class": routing["class"], "bay": routing["bay"]})
    return routing
