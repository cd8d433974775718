"""ingest: S3 "Object Created" events of the inbox → one workflow execution per object, or a dead letter.

Triggered by the ingest queue (EventBridge rule → SQS → event source mapping; locally the runtime's
dispatcher builds the same SQS event), with partial batch failures: a record fails only on a transient
error or a malformed message, and SQS redelivers just that record. Also accepts a bare EventBridge event
(a rule targeting the function directly), where any failure fails the invocation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from bayroute.adapters.aws import (
    DeadLetterQueue,
    EventPublisher,
    ObjectStore,
    WorkflowStarter,
    aws_client,
    idempotency_store,
    per_environment,
    s3_client,
)
from bayroute.config import load_settings
from bayroute.errors import InvalidEvent
from bayroute.steps.ingest import Ingest
from services import count, tracer_for

SERVICE = "bayroute-ingest"
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace="bayroute", service=SERVICE)

_METRIC_BY_STATUS = {
    "started": "ObjectsAdmitted",
    "already_started": "ObjectsAlreadyStarted",
    "rejected": "ObjectsRejected",
    "ignored": "EventsIgnored",
}


@per_environment
def ingest() -> Ingest:
    settings = load_settings()
    return Ingest(
        settings,
        inbox=ObjectStore(s3_client()),
        dead_letters=DeadLetterQueue(aws_client("sqs"), settings.names.dead_letter_queue),
        events=EventPublisher(aws_client("events"), bus=settings.names.event_bus, source=settings.events.source),
        workflows=WorkflowStarter(aws_client("stepfunctions"), settings.names.state_machine),
        persistence=idempotency_store(settings.names.idempotency_table),
    )


def handle_event(event: dict[str, Any]) -> dict[str, Any]:
    outcome = ingest().handle(EventBridgeEvent(event))
    if outcome.duplicate_delivery:
        count(metrics, "DuplicateDeliveries")
    else:
        count(metrics, _METRIC_BY_STATUS[outcome.status])
    log = logger.warning if outcome.status == "rejected" else logger.info
    log(f"object {outcome.status}", extra=outcome.to_dict())
    return outcome.to_dict()


def record_handler(record: SQSRecord) -> dict[str, Any]:
    try:
        try:
            body = record.json_body
        except ValueError as exc:
            raise InvalidEvent(f"SQS message {record.message_id} is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidEvent(f"SQS message {record.message_id} is not an EventBridge event", got=record.body[:200])
        return handle_event(body)
    except Exception:
        # The batch processor only reports the failed message id back to SQS: say why here.
        logger.exception("record failed; SQS will deliver it again", extra={"message_id": record.message_id})
        count(metrics, "RecordsFailed")
        raise


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    ingest().idempotency_config.register_lambda_context(context)
    if "Records" in event:
        # A processor per invocation: the local runtime may run several batches at once in one process.
        processor = BatchProcessor(event_type=EventType.SQS)
        return process_partial_response(event=event, record_handler=record_handler, processor=processor)
    if "detail-type" in event:
        return handle_event(event)
    raise InvalidEvent("expected an SQS batch or an EventBridge event", keys=sorted(event)[:20])
