"""monitor: a scheduled function. Each invocation (an EventBridge schedule) runs one monitor pass.

The pass reads the capture records written since the last one, publishes per-window metrics and drift, and
moves the watermark (``bayroute.monitoring.monitor``). On Lambda the metrics go out as embedded metric format
in the function's log; where ``AWS_ENDPOINT_URL`` points at another endpoint (the local stack's moto), through
``PutMetricData``. Run it with reserved concurrency 1: overlapping passes are refused at commit anyway.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from bayroute.adapters.aws import aws_client, per_environment
from bayroute.config import load_settings
from bayroute.monitoring.monitor import Monitor, MonitorConfig, baselines_from_model
from bayroute.monitoring.publish import EmfSink, MetricSink, PutMetricDataSink
from services import tracer_for

SERVICE = "bayroute-monitor"
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)


@per_environment
def monitor() -> Monitor:
    settings = load_settings()
    namespace = settings.monitoring.namespace
    sink: MetricSink = (
        PutMetricDataSink(aws_client("cloudwatch"), namespace)
        if os.environ.get("AWS_ENDPOINT_URL")
        else EmfSink(namespace)
    )
    baselines = baselines_from_model(settings.model_path) if settings.model_path.is_file() else {}
    if not baselines:
        logger.warning("no drift baseline: drift is not measured", extra={"model_path": str(settings.model_path)})
    return Monitor(aws_client("s3"), sink, MonitorConfig.from_settings(settings), baselines=baselines)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    result = monitor().run_once().to_dict()
    # A manual invocation ({}) runs a pass too: the event only says what triggered it.
    logger.info(
        "monitor pass", extra={"trigger": event.get("detail-type"), "scheduled_at": event.get("time"), "result": result}
    )
    return result
