"""The monitor against moto: metrics stored, watermark kept, alarms evaluated, on-call messages delivered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bayroute.capture import CaptureWriter, parse_capture_line
from bayroute.config import Settings, load_settings
from bayroute.local.monitoring import LocalMonitor, provision_monitoring
from bayroute.monitoring.alarms import ALARM_HISTORY_PREFIX, AlarmEvaluator, S3AlarmHistory
from bayroute.monitoring.monitor import Monitor, MonitorConfig
from bayroute.monitoring.publish import PutMetricDataSink
from bayroute.monitoring.state import ConcurrentPass, StateStore
from bayroute.monitoring.stats import Baseline, Bins
from services.monitor import handler as monitor_handler
from tests.integration.test_handlers_support import LambdaContextStub, moto_world
from tests.unit.test_monitoring_records import bayroute_line, gray_image

REGION = "us-east-1"
NOW = datetime.now(UTC).replace(second=0, microsecond=0)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket=load_settings().names.capture_bucket)
        yield session


def write_records(
    session: boto3.Session, settings: Settings, specs: list[tuple[str, datetime, list[float], int]]
) -> None:
    """Capture records as the infer step stores them: (event id, inference time, probabilities, gray level)."""
    names = settings.names
    writer = CaptureWriter(
        session.client("s3"),
        names.capture_bucket,
        settings.prefixes.capture,
        names.endpoint_name,
        names.endpoint_variant,
    )
    for event_id, when, probabilities, level in specs:
        line = bayroute_line(probabilities, event_id=event_id, when=when, image=gray_image(level, seed=len(event_id)))
        record = json.loads(line)
        assert parse_capture_line(line).event_id == event_id
        writer.write(record, when)


def metric(session: boto3.Session, name: str, dims: dict[str, str], start: datetime, stat: str = "Sum") -> list[float]:
    answer = session.client("cloudwatch").get_metric_data(
        MetricDataQueries=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "bayroute",
                        "MetricName": name,
                        "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
                    },
                    "Period": 60,
                    "Stat": stat,
                },
            }
        ],
        StartTime=start,
        EndTime=start + timedelta(minutes=1),
    )
    return [float(v) for v in answer["MetricDataResults"][0]["Values"]]


def monitor(session: boto3.Session, settings: Settings, **config: Any) -> Monitor:
    baselines = config.pop("baselines", {})
    return Monitor(
        session.client("s3"),
        PutMetricDataSink(session.client("cloudwatch"), settings.monitoring.namespace),
        MonitorConfig.from_settings(settings, **config),
        baselines=baselines,
    )


def test_a_pass_publishes_each_windows_metrics_once_and_a_restart_goes_on_from_the_watermark(
    aws: boto3.Session,
) -> None:
    settings = load_settings()
    window = NOW - timedelta(minutes=10)
    write_records(
        aws, settings, [("e1", window, [0.02, 0.98], 120), ("e2", window + timedelta(seconds=5), [0.6, 0.4], 120)]
    )
    first = monitor(aws, settings).run_once()
    assert (first.objects_read, first.tally.records) == (2, 2)
    overall = {"service": settings.names.monitor_function}
    per_version = {"Endpoint": settings.names.endpoint_name, "ModelVersion": "v1"}
    assert metric(aws, "RequestCount", overall, window) == [2.0]
    assert metric(aws, "RequestCount", per_version, window) == [2.0]
    assert metric(aws, "BelowThresholdShare", overall, window, "Maximum") == [0.5]
    assert metric(aws, "PredictedClassShare", {**overall, "Class": "motorcycle"}, window, "Maximum") == [0.5]
    assert metric(aws, "ConfidenceP50", per_version, window, "Maximum") == pytest.approx([0.79])

    again = monitor(aws, settings).run_once()  # a restart: a new process reads the state back
    assert (again.objects_read, again.datums) == (0, 0)
    assert metric(aws, "RequestCount", overall, window) == [2.0]

    later = NOW - timedelta(minutes=5)
    write_records(aws, settings, [("e3", later, [0.99, 0.01], 120)])
    third = monitor(aws, settings).run_once()
    assert third.objects_read == 1
    assert metric(aws, "RequestCount", overall, later) == [1.0]
    assert metric(aws, "RequestCount", overall, window) == [2.0]


def test_a_pass_reads_at_most_its_limit_and_the_next_pass_reads_the_rest(aws: boto3.Session) -> None:
    settings = load_settings()
    write_records(aws, settings, [(f"e{i}", NOW - timedelta(minutes=3), [0.1, 0.9], 100) for i in range(5)])
    first = monitor(aws, settings, max_objects_per_pass=3).run_once()
    assert (first.objects_read, first.objects_waiting) == (3, 2)
    second = monitor(aws, settings, max_objects_per_pass=3).run_once()
    assert (second.objects_read, second.objects_waiting) == (2, 0)
    assert (
        sum(metric(aws, "RequestCount", {"service": settings.names.monitor_function}, NOW - timedelta(minutes=3))) == 5
    )


def test_two_passes_cannot_both_commit(aws: boto3.Session) -> None:
    settings = load_settings()
    monitor(aws, settings).run_once()  # creates the state object
    store = StateStore(aws.client("s3"), settings.names.capture_bucket, settings.monitoring.watermark_key)
    mine, theirs = store.load(), store.load()
    store.save(theirs)
    with pytest.raises(ConcurrentPass, match="another monitor pass"):
        store.save(mine)
    fresh = StateStore(aws.client("s3"), settings.names.capture_bucket, "never-written")
    first, second = fresh.load(), fresh.load()
    fresh.save(first)
    with pytest.raises(ConcurrentPass):
        fresh.save(second)


def test_drift_is_published_over_the_horizon_once_enough_records_arrived(aws: boto3.Session) -> None:
    settings = load_settings()
    baseline = Baseline("v1", {"brightness": Bins((0.3, 0.4, 0.6), (10, 40, 40, 10))}, n=100)
    dark = [(f"d{i}", NOW - timedelta(minutes=20), [0.4, 0.6], 20) for i in range(12)]
    write_records(aws, settings, dark[:6])
    first = monitor(aws, settings, baselines={"v1": baseline}, min_drift_samples=10).run_once()
    assert first.drift == {}  # 6 records: too few
    write_records(aws, settings, [(e, NOW - timedelta(minutes=14), p, g) for e, _, p, g in dark[6:]])
    second = monitor(aws, settings, baselines={"v1": baseline}, min_drift_samples=10).run_once()
    # 12 records over the horizon, all darker than the baseline's darkest bin
    assert second.drift[(None, None)]["brightness"] > 1.0
    assert second.drift[(settings.names.endpoint_name, "v1")] == second.drift[(None, None)]
    drift = metric(
        aws, "DriftScore", {"service": settings.names.monitor_function}, NOW - timedelta(minutes=14), "Maximum"
    )
    assert drift == [pytest.approx(second.drift[(None, None)]["brightness"])]


def oncall_messages(session: boto3.Session, queue_url: str) -> list[dict[str, Any]]:
    sqs = session.client("sqs")
    found = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            found.append(json.loads(message["Body"]))
    return found


def test_alarms_change_state_in_cloudwatch_and_each_change_reaches_oncall_in_cloudwatchs_format(
    aws: boto3.Session,
) -> None:
    settings = load_settings()
    resources = provision_monitoring(aws, settings)
    cloudwatch, s3 = aws.client("cloudwatch"), aws.client("s3")
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    assert set(alarms) == set(resources.alarm_names)
    assert {a["StateValue"] for a in alarms.values()} == {"INSUFFICIENT_DATA"}
    assert provision_monitoring(aws, settings) == resources  # idempotent: one subscription, same alarms

    history = S3AlarmHistory(s3, settings.names.capture_bucket, ALARM_HISTORY_PREFIX)
    evaluator = AlarmEvaluator(cloudwatch, aws.client("sns"), region=REGION, history=history)
    first = evaluator.evaluate_all(NOW)
    assert {(t.alarm_name, t.new_state) for t in first} == {(name, "OK") for name in resources.alarm_names}
    assert len(oncall_messages(aws, resources.oncall_queue_url)) == len(resources.alarm_names)  # OK actions

    dims = [{"Name": "service", "Value": settings.names.monitor_function}]
    for minutes, value in ((12, 0.4), (7, 0.9), (2, 0.3)):
        cloudwatch.put_metric_data(
            Namespace="bayroute",
            MetricData=[
                {
                    "MetricName": "DriftScore",
                    "Dimensions": dims,
                    "Timestamp": NOW - timedelta(minutes=minutes),
                    "Value": value,
                }
            ],
        )
    [change] = evaluator.evaluate_all(NOW)
    assert (change.alarm_name, change.old_state, change.new_state) == ("bayroute-drift", "OK", "ALARM")
    drift = cloudwatch.describe_alarms(AlarmNames=["bayroute-drift"])["MetricAlarms"][0]
    assert drift["StateValue"] == "ALARM"
    assert drift["StateReason"].startswith("Threshold Crossed: 3 out of the last 3 datapoints [0.3 (")
    assert json.loads(drift["StateReasonData"])["recentDatapoints"] == [0.3, 0.9, 0.4]

    [envelope] = oncall_messages(aws, resources.oncall_queue_url)
    assert envelope["Type"] == "Notification"
    assert envelope["TopicArn"] == resources.oncall_topic_arn
    assert envelope["Subject"] == 'ALARM: "bayroute-drift" in US East (N. Virginia)'
    message = json.loads(envelope["Message"])
    assert (message["AlarmName"], message["OldStateValue"], message["NewStateValue"]) == (
        "bayroute-drift",
        "OK",
        "ALARM",
    )
    assert message["AlarmArn"] == drift["AlarmArn"]
    assert message["AlarmActions"] == [resources.oncall_topic_arn]
    assert message["Trigger"]["MetricName"] == "DriftScore"
    assert message["Trigger"]["Dimensions"] == [{"value": settings.names.monitor_function, "name": "service"}]
    assert message["NewStateReason"] == drift["StateReason"]

    assert evaluator.evaluate_all(NOW) == []  # no change, no message
    assert oncall_messages(aws, resources.oncall_queue_url) == []
    # Once the breaching datapoints leave the range, the alarm recovers (notBreaching) and says so.
    [recovery] = evaluator.evaluate_all(NOW + timedelta(minutes=40))
    assert (recovery.alarm_name, recovery.new_state) == ("bayroute-drift", "OK")
    [envelope] = oncall_messages(aws, resources.oncall_queue_url)
    assert json.loads(envelope["Message"])["NewStateValue"] == "OK"
    changes = [h["new_state"] for h in history.transitions() if h["alarm_name"] == "bayroute-drift"]
    assert changes == ["OK", "ALARM", "OK"]


def test_the_local_monitor_runs_passes_and_evaluations_in_the_background(aws: boto3.Session) -> None:
    settings = load_settings()
    provision_monitoring(aws, settings)
    write_records(aws, settings, [("bg1", NOW - timedelta(minutes=2), [0.1, 0.9], 120)])
    local = LocalMonitor(aws, settings, interval_seconds=0.05, baselines={})
    local.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while datetime.now(UTC) < deadline:
            states = {a["StateValue"] for a in aws.client("cloudwatch").describe_alarms()["MetricAlarms"]}
            if states == {"OK"}:
                break
        assert states == {"OK"}
    finally:
        local.stop()
    assert metric(aws, "RequestCount", {"service": settings.names.monitor_function}, NOW - timedelta(minutes=2)) == [
        1.0
    ]
    with pytest.raises(RuntimeError, match="already running"):
        local.start().start()
    local.stop()


def test_the_handler_runs_one_pass_on_a_schedule_event_and_logs_emf(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with moto_world(monkeypatch) as world:
        monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")
        monitor_handler.monitor.cache_clear()
        session = boto3.Session(region_name=REGION)
        write_records(session, world.settings, [("h1", NOW - timedelta(minutes=1), [0.3, 0.7], 100)])
        event = {
            "version": "0",
            "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/bayroute-monitor"],
            "detail": {},
        }
        capsys.readouterr()
        result = monitor_handler.handler(event, LambdaContextStub())
        monitor_handler.monitor.cache_clear()
    assert (result["objects_read"], result["records"]) == (1, 1)
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    overall = next(
        d for d in documents if d.get("service") == world.settings.names.monitor_function and "RequestCount" in d
    )
    assert overall["RequestCount"] == [1.0]
    assert overall["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "bayroute"


def test_alarms_the_evaluator_cannot_compute_are_left_alone(aws: boto3.Session) -> None:
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="someone-elses-math",
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold",
        Metrics=[
            {
                "Id": "m",
                "MetricStat": {
                    "Metric": {"Namespace": "bayroute", "MetricName": "RequestCount"},
                    "Period": 60,
                    "Stat": "Sum",
                },
            }
        ],
    )
    cloudwatch.put_metric_alarm(
        AlarmName="someone-elses-p99",
        Namespace="bayroute",
        MetricName="ConfidenceMean",
        ExtendedStatistic="p99",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    assert AlarmEvaluator(cloudwatch, aws.client("sns"), region=REGION).evaluate_all(NOW) == []
