"""serialize: a workflow task. ``{"request"}`` → ``{"image", "input_stats"}``: the model-size PNG, never the photo.

A named error (``TruncatedImage``, ``TooManyPixels``, ...) fails the invocation with that ``errorType``, which
the workflow catches and dead-letters with its reason.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from bayroute.adapters.aws import ObjectStore, per_environment, s3_client
from bayroute.config import load_settings
from bayroute.errors import WorkflowError
from bayroute.steps.serialize import Serialize
from services import count, tracer_for

SERVICE = "bayroute-serialize"
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace="bayroute", service=SERVICE)


@per_environment
def serialize() -> Serialize:
    store = ObjectStore(s3_client())
    return Serialize(load_settings(), inbox=store, staging=store)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        output = serialize().run(event)
    except WorkflowError as error:
        count(metrics, "ImagesRejected")
        logger.warning("image rejected", extra={"reason": error.reason, "detail": error.detail, "facts": error.facts})
        raise
    staged = "s3" in output["image"]
    count(metrics, "ImagesSerialized")
    if staged:
        count(metrics, "PayloadsStaged")
    logger.info("image serialized", extra={"staged": staged, "input_stats": output["input_stats"]})
    return output
