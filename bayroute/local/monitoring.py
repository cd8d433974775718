"""Monitoring on the local stack: the on-call queue, the alarms, and what CloudWatch would do that moto does not.

``provision_monitoring`` creates, in moto, the on-call notifications queue subscribed to the on-call topic
and one CloudWatch alarm per entry of ``infra/alarms.json`` (ALARM and OK actions: the on-call topic), as the
AWS template does. ``LocalMonitor`` is a background thread that every ``interval_seconds`` runs one monitor
pass (new capture records → metrics in moto → watermark) and then evaluates every alarm the way CloudWatch
would, setting its state in moto and publishing CloudWatch's notification to the topic on each change.

The local stack calls both: after ``provision(...)`` in ``LocalStack.start()``, and ``stop()`` in
``LocalStack.stop()`` before the moto server goes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bayroute.config import Settings
from bayroute.local.lambda_api import ACCOUNT_ID, REGION
from bayroute.monitoring.alarms import (
    ALARM_HISTORY_PREFIX,
    AlarmDefinition,
    AlarmEvaluator,
    S3AlarmHistory,
    Transition,
    load_alarm_definitions,
    local_arn,
)
from bayroute.monitoring.monitor import Monitor, MonitorConfig, PassResult, baselines_from_model
from bayroute.monitoring.publish import PutMetricDataSink
from bayroute.monitoring.stats import Baseline

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 15.0


@dataclass(frozen=True)
class MonitoringResources:
    oncall_topic_arn: str
    oncall_queue_url: str
    alarm_names: tuple[str, ...]


def _arn(key: str, name: str) -> str:
    return local_arn(key, name, region=REGION, account=ACCOUNT_ID)


def provision_monitoring(
    session: Any, settings: Settings, definitions: Sequence[AlarmDefinition] | None = None
) -> MonitoringResources:
    """Create (or update) the on-call queue and its subscription, and the alarms. ``session``: a boto3 Session."""
    definitions = load_alarm_definitions() if definitions is None else definitions
    names = settings.names
    sns = session.client("sns")
    sqs = session.client("sqs")
    topic_arn = sns.create_topic(Name=names.oncall_topic)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=names.oncall_queue, Attributes={"SqsManagedSseEnabled": "true"})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # As on AWS: the queue accepts messages from the topic only.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    subscribed = {s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])}
    if queue_arn not in subscribed:
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    cloudwatch = session.client("cloudwatch")
    existing = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmTypes=["MetricAlarm"])["MetricAlarms"]}
    for definition in definitions:
        cloudwatch.put_metric_alarm(**definition.put_metric_alarm_arguments(settings, _arn, [topic_arn]))
        # CloudWatch starts a new alarm in INSUFFICIENT_DATA and leaves an updated one in its state; moto puts
        # every alarm it is given in OK.
        before = existing.get(definition.name)
        cloudwatch.set_alarm_state(
            AlarmName=definition.name,
            StateValue=before["StateValue"] if before else "INSUFFICIENT_DATA",
            StateReason=before["StateReason"] if before else "Unchecked: Initial alarm creation",
        )
    return MonitoringResources(
        oncall_topic_arn=topic_arn,
        oncall_queue_url=queue_url,
        alarm_names=tuple(d.name for d in definitions),
    )


def local_baselines(settings: Settings) -> dict[str, Baseline]:
    """The drift baseline of the model the local stack serves (none when the model file is absent)."""
    path = Path(settings.model_path)
    return baselines_from_model(path) if path.is_file() else {}


class LocalMonitor:
    """Monitor passes and alarm evaluations in a background thread; ``run_once`` does one of each in the caller."""

    def __init__(
        self,
        session: Any,
        settings: Settings,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        baselines: Mapping[str, Baseline] | None = None,
        config: MonitorConfig | None = None,
    ) -> None:
        s3 = session.client("s3")
        cloudwatch = session.client("cloudwatch")
        self.monitor = Monitor(
            s3,
            PutMetricDataSink(cloudwatch, settings.monitoring.namespace),
            config or MonitorConfig.from_settings(settings),
            baselines=local_baselines(settings) if baselines is None else baselines,
        )
        self.evaluator = AlarmEvaluator(
            cloudwatch,
            session.client("sns"),
            region=REGION,
            history=S3AlarmHistory(s3, settings.names.capture_bucket, ALARM_HISTORY_PREFIX),
        )
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run_once(self, now: datetime | None = None) -> tuple[PassResult, list[Transition]]:
        """One monitor pass, then one evaluation of every alarm at ``now`` (default: the current time)."""
        with self._lock:
            result = self.monitor.run_once()
            transitions = self.evaluator.evaluate_all(now or datetime.now(UTC))
        for transition in transitions:
            log.warning("alarm %s: %s -> %s", transition.alarm_name, transition.old_state, transition.new_state)
        return result, transitions

    def start(self) -> LocalMonitor:
        if self._thread is not None:
            raise RuntimeError("the local monitor is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="local-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.run_once()
            except Exception:  # the next pass retries; a failing pass must not end monitoring
                log.exception("local monitor pass failed")
