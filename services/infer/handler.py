"""infer: a workflow task. ``{"request", "image", "input_stats"}`` → the prediction, plus one data-capture record.

The endpoint backend comes from the settings (``http``: our endpoint server; ``sagemaker``: a deployed
endpoint; ``lambda``: the model in this process) and is created once per process. ``EndpointUnavailable``
and ``EndpointThrottled`` fail the invocation under those names, which the workflow retries with backoff.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext

from bayroute.adapters.aws import ObjectStore, per_environment, s3_client
from bayroute.adapters.endpoint import endpoint_from_settings
from bayroute.capture import CaptureWriter
from bayroute.config import load_settings
from bayroute.errors import WorkflowError
from bayroute.steps.infer import Infer
from services import count, tracer_for

SERVICE = "bayroute-infer"
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace="bayroute", service=SERVICE)


@per_environment
def infer() -> Infer:
    settings = load_settings()
    names = settings.names
    # The capture write is the one S3 call on the way to the first answer: signed where the environment allows,
    # it needs no botocore client (about 0.4 s of a cold start).
    s3 = s3_client()
    # A SageMaker endpoint captures every inference itself (its DataCaptureConfig): a second record here
    # would make the monitor count each inference twice.
    capture = (
        None
        if settings.inference_backend == "sagemaker"
        else CaptureWriter(
            s3, names.capture_bucket, settings.prefixes.capture, names.endpoint_name, names.endpoint_variant
        )
    )
    return Infer(settings, endpoint=endpoint_from_settings(settings), staging=ObjectStore(s3), capture=capture)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        prediction = infer().run(event)
    except WorkflowError as error:
        count(metrics, "InferenceErrors")
        log = logger.warning if error.transient else logger.error
        log("inference failed", extra={"reason": error.reason, "detail": error.detail, "facts": error.facts})
        raise
    count(metrics, "Inferences")
    metrics.add_metadata(key="model_version", value=prediction["model_version"])
    logger.info(
        "inferred",
        extra={
            "inference_id": prediction["inference_id"],
            "class": prediction["top_class"],
            "confidence": prediction["confidence"],
            "model_version": prediction["model_version"],
        },
    )
    return prediction
