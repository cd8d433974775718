"""Darkened photos drift away from the model's baseline, and the drift alarm reaches on-call.

The local stack's resources (``bayroute.local.provision`` and ``provision_monitoring``) in moto; real CIFAR-100
images, darkened, routed through the real serialize and infer steps with the committed model in-process, which
write SageMaker capture records to the capture bucket; the local monitor (one pass per simulated 5-minute
schedule tick, then alarm evaluation as CloudWatch does it); and the on-call queue subscribed to the topic.
Inference times are simulated (the infer step's clock), so three 5-minute periods pass in a second.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws
from PIL import Image

from bayroute.adapters.aws import ObjectStore
from bayroute.adapters.endpoint import InProcessEndpoint
from bayroute.capture import CaptureWriter
from bayroute.config import Settings, load_settings
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.local.monitoring import LocalMonitor, MonitoringResources, provision_monitoring
from bayroute.local.provision import provision
from bayroute.model.onnx_model import OnnxClassifier
from bayroute.monitoring.alarms import load_alarm_definitions
from bayroute.monitoring.monitor import MonitorConfig
from bayroute.monitoring.publish import DRIFT_SCORE
from bayroute.steps.infer import Infer
from bayroute.steps.serialize import Serialize

REGION = "us-east-1"
PER_TICK = 30  # images per simulated 5-minute tick, half of each class
DARKENING = 0.4


class Site:
    """The local stack's resources in moto, and the workflow's serialize and infer steps over them."""

    def __init__(self, session: boto3.Session, settings: Settings, model: OnnxClassifier) -> None:
        self.session = session
        self.settings = settings
        self.model = model
        self.monitoring: MonitoringResources = provision_monitoring(session, settings)
        names = settings.names
        self.s3 = session.client("s3")
        store = ObjectStore(self.s3)
        capture = CaptureWriter(
            self.s3, names.capture_bucket, settings.prefixes.capture, names.endpoint_name, names.endpoint_variant
        )
        self.clock = datetime.now(UTC)
        self.serialize = Serialize(settings, inbox=store, staging=store)
        self.infer = Infer(
            settings, endpoint=InProcessEndpoint(model), staging=store, capture=capture, clock=lambda: self.clock
        )

    def route(self, name: str, data: bytes, when: datetime) -> dict[str, Any]:
        """One object through serialize and infer as the workflow runs them, at the simulated time ``when``."""
        names = self.settings.names
        put = self.s3.put_object(Bucket=names.inbox_bucket, Key=name, Body=data)
        ref = ObjectRef(names.inbox_bucket, name, put["ETag"].strip('"'), len(data), put.get("VersionId"))
        state = WorkflowRequest(ref, received_at=when.isoformat()).to_dict()
        state.update(self.serialize.run(state))
        self.clock = when
        return self.infer.run(state)

    def oncall(self) -> list[dict[str, Any]]:
        sqs = self.session.client("sqs")
        queue = self.monitoring.oncall_queue_url
        received = []
        while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
            for message in batch:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                received.append(json.loads(message["Body"]))
        return received


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch, default_model: Path) -> Iterator[Site]:
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = load_settings()
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        provision(session, settings)
        yield Site(session, settings, OnnxClassifier(default_model))


def darkened_photos(dataset: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` real images, half of each class, darkened to ``DARKENING`` of their brightness, as PNG files."""
    photos = []
    for label in ("bicycle", "motorcycle"):
        for path in sorted((dataset / "train" / label).glob("*.png"))[: count // 2]:
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) * DARKENING
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
            photos.append((f"{label}-{path.name}", buffer.getvalue()))
    return photos


def test_darkened_photos_raise_the_drift_alarm_and_on_call_hears_of_it(site: Site, shared_dataset: Path) -> None:
    alarm = next(d for d in load_alarm_definitions() if d.metric == DRIFT_SCORE)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # One schedule tick per period of the alarm, each in its own period, the last one just ended.
    ticks = [now - timedelta(seconds=alarm.period * k + 120) for k in reversed(range(alarm.evaluation_periods))]
    photos = darkened_photos(shared_dataset, len(ticks) * PER_TICK)
    # The sample floor of drift is lowered from 200 to one tick's records to keep the test short; darkening
    # moves brightness PSI to about 5, far beyond what 30 records of undisturbed photos reach.
    config = MonitorConfig.from_settings(site.settings, min_drift_samples=PER_TICK)
    monitor = LocalMonitor(site.session, site.settings, config=config)
    assert set(monitor.monitor.baselines) == {site.model.model_version}

    states_after: list[str] = []
    for tick, start in zip(ticks, range(0, len(photos), PER_TICK), strict=True):
        for offset, (name, data) in enumerate(photos[start : start + PER_TICK]):
            site.route(name, data, tick + timedelta(seconds=offset))
        result, _ = monitor.run_once(now=tick + timedelta(minutes=1))
        assert result.objects_read == PER_TICK
        assert result.drift[(None, None)]["brightness"] > 1.0
        [described] = site.session.client("cloudwatch").describe_alarms(AlarmNames=[alarm.name])["MetricAlarms"]
        states_after.append(described["StateValue"])
    # M of N periods must breach: the alarm waits for the M-th tick.
    m = alarm.datapoints_to_alarm
    assert states_after == ["OK"] * (m - 1) + ["ALARM"] * (len(ticks) - m + 1)

    notifications = [n for n in site.oncall() if json.loads(n["Message"])["AlarmName"] == alarm.name]
    message = json.loads(notifications[-1]["Message"])
    assert notifications[-1]["Subject"] == f'ALARM: "{alarm.name}" in US East (N. Virginia)'
    assert (message["OldStateValue"], message["NewStateValue"]) == ("OK", "ALARM")
    assert message["Trigger"]["MetricName"] == DRIFT_SCORE
    assert message["NewStateReason"].startswith(f"Threshold Crossed: {m} out of the last {alarm.evaluation_periods}")
    assert message["AlarmDescription"] == alarm.description
