"""replay: start the workflow again for dead-lettered objects, as ``bayroute dlq replay`` does against AWS.

Event (every field optional): ``{"reason": "endpoint_unavailable", "since": "2h" or an ISO 8601 time,
"limit": 100, "dry_run": false}``. Returns the replay report (``bayroute.replay.ReplayReport.to_dict``).
It stops starting new runs shortly before the function's timeout; what is left stays in the queue, visible
again, and is reported as ``deferred``.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from bayroute.adapters.aws import DeadLetterQueue, WorkflowStarter, aws_client, per_environment
from bayroute.config import load_settings
from bayroute.errors import InvalidEvent
from bayroute.replay import Replayer, S3ObjectPresence, Selection, SqsDeadLetters
from services import count, tracer_for

SERVICE = "bayroute-replay"
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace="bayroute", service=SERVICE)
# Time kept back from the function's timeout to release the messages not reached and to answer.
RESERVE_SECONDS = 10.0


@per_environment
def replayer() -> Replayer:
    settings = load_settings()
    sqs = aws_client("sqs")
    queue = SqsDeadLetters(sqs, DeadLetterQueue(sqs, settings.names.dead_letter_queue).url)
    workflows = WorkflowStarter(aws_client("stepfunctions"), settings.names.state_machine)
    return Replayer(queue, workflows, S3ObjectPresence(aws_client("s3")))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidEvent("the replay event must be a JSON object", got=repr(event)[:200])
    selection = Selection.from_event(event)
    dry_run = event.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidEvent("'dry_run' must be true or false", got=repr(dry_run)[:100])
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - RESERVE_SECONDS
    report = replayer().replay(selection, dry_run=dry_run, deadline=deadline)
    for outcome, number in report.counts().items():
        count(metrics, f"Replay_{outcome}", number)
    log = logger.warning if report.kept else logger.info
    log("replay done", extra={"dry_run": dry_run, "scanned": report.scanned, "counts": report.counts()})
    return report.to_dict()
