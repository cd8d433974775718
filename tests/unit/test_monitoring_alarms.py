"""Alarm evaluation as CloudWatch documents it, the notification message it sends, and the alarm definitions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bayroute.config import load_settings
from bayroute.monitoring.alarms import (
    AlarmDefinition,
    AlarmDefinitionError,
    AlarmState,
    Datapoint,
    ResourceRef,
    actions_for,
    evaluate,
    evaluation_range,
    format_cloudwatch_time,
    load_alarm_definitions,
    local_arn,
    notification_message,
    notification_subject,
)
from bayroute.monitoring.publish import BELOW_THRESHOLD_SHARE, DRIFT_SCORE

START = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
OK, ALARM, INSUFFICIENT = AlarmState.OK, AlarmState.ALARM, AlarmState.INSUFFICIENT_DATA


def points(pattern: str) -> list[Datapoint]:
    """``"0 - X - X"``, oldest first: 0 is a datapoint within the threshold (1), X one beyond it, - none."""
    values = {"0": 0.0, "X": 2.0, "-": None}
    return [Datapoint(START + timedelta(minutes=5 * i), values[c]) for i, c in enumerate(pattern.split())]


def state(pattern: str, treat: str, m: int = 3, n: int = 3, current: AlarmState = OK) -> AlarmState:
    return evaluate(
        points(pattern),
        comparison="GreaterThanThreshold",
        threshold=1.0,
        evaluation_periods=n,
        datapoints_to_alarm=m,
        treat_missing_data=treat,
        current=current,
    ).state


TREATMENTS = ("missing", "ignore", "breaching", "notBreaching")
RETAIN = "retain"

# The CloudWatch user guide's tables ("How alarm state is evaluated when data is missing"): the 5 most recent
# datapoints, and the state for each missing-data treatment, in the order of TREATMENTS.
THREE_OF_THREE = [
    ("0 - X - X", (OK, OK, OK, OK)),
    ("0 - - - -", (OK, OK, OK, OK)),
    ("- - - - -", (INSUFFICIENT, RETAIN, ALARM, OK)),
    ("0 X X - X", (ALARM, ALARM, ALARM, ALARM)),
    ("- - - - X", (INSUFFICIENT, RETAIN, ALARM, OK)),
    ("X - - - -", (ALARM, RETAIN, ALARM, OK)),
]
TWO_OF_THREE = [
    ("0 - X - X", (ALARM, ALARM, ALARM, ALARM)),
    ("0 0 X 0 X", (ALARM, ALARM, ALARM, ALARM)),
    ("0 - X - -", (OK, OK, ALARM, OK)),
    ("- - - - 0", (OK, OK, ALARM, OK)),
    ("- - - - X", (INSUFFICIENT, RETAIN, ALARM, OK)),
]


@pytest.mark.parametrize(("pattern", "expected"), THREE_OF_THREE)
def test_three_of_three_matches_the_cloudwatch_guide(pattern: str, expected: tuple) -> None:
    for treat, want in zip(TREATMENTS, expected, strict=True):
        for current in (OK, ALARM, INSUFFICIENT):
            assert state(pattern, treat, current=current) == (current if want == RETAIN else want), (treat, current)


@pytest.mark.parametrize(("pattern", "expected"), TWO_OF_THREE)
def test_two_of_three_matches_the_cloudwatch_guide(pattern: str, expected: tuple) -> None:
    for treat, want in zip(TREATMENTS, expected, strict=True):
        for current in (OK, ALARM, INSUFFICIENT):
            got = state(pattern, treat, m=2, current=current)
            assert got == (current if want == RETAIN else want), (treat, current)


def test_with_enough_datapoints_only_the_most_recent_n_count() -> None:
    # Breaching long ago, fine lately: OK whatever the treatment.
    for treat in TREATMENTS:
        assert state("X X 0 0 0", treat) == OK
        assert state("0 0 X X X", treat) == ALARM
    # M of N: breaching datapoints need not be consecutive.
    assert state("0 X 0 X 0", "missing", m=2, n=4) == ALARM
    assert state("0 X 0 0 0", "missing", m=2, n=4) == OK


def test_one_period_alarms_follow_the_latest_datapoint() -> None:
    assert state("- - X", "notBreaching", m=1, n=1) == ALARM
    assert state("X X 0", "notBreaching", m=1, n=1) == OK
    assert state("- - -", "notBreaching", m=1, n=1, current=ALARM) == OK
    assert state("- - -", "missing", m=1, n=1) == INSUFFICIENT


@pytest.mark.parametrize(
    ("comparison", "value", "breaching"),
    [
        ("GreaterThanThreshold", 1.0, False),
        ("GreaterThanOrEqualToThreshold", 1.0, True),
        ("LessThanThreshold", 1.0, False),
        ("LessThanOrEqualToThreshold", 1.0, True),
        ("LessThanThreshold", 0.5, True),
    ],
)
def test_comparison_operators(comparison: str, value: float, breaching: bool) -> None:
    result = evaluate(
        [Datapoint(START, value)],
        comparison=comparison,
        threshold=1.0,
        evaluation_periods=1,
        datapoints_to_alarm=1,
        treat_missing_data="missing",
        current=OK,
    )
    assert result.state == (ALARM if breaching else OK)


def test_the_reason_reads_like_cloudwatchs() -> None:
    result = evaluate(
        [Datapoint(START, 0.3), Datapoint(START + timedelta(minutes=5), 0.41)],
        comparison="GreaterThanOrEqualToThreshold",
        threshold=0.25,
        evaluation_periods=2,
        datapoints_to_alarm=2,
        treat_missing_data="notBreaching",
        current=OK,
    )
    assert result.reason == (
        "Threshold Crossed: 2 out of the last 2 datapoints [0.41 (28/11/26 16:05:00), 0.3 (28/11/26 16:00:00)] "
        "were greater than or equal to the threshold (0.25) (minimum 2 datapoints for OK -> ALARM transition)."
    )
    assert [p.value for p in result.evaluated] == [0.41, 0.3]  # newest first
    quiet = evaluate(
        points("- - -"),
        comparison="GreaterThanThreshold",
        threshold=1.0,
        evaluation_periods=1,
        datapoints_to_alarm=1,
        treat_missing_data="notBreaching",
        current=ALARM,
    )
    assert quiet.reason == (
        "Threshold Crossed: no datapoints were received for 1 period and 1 missing datapoint was treated as "
        "[NonBreaching]."
    )


def test_the_evaluation_range_ends_at_the_current_minute_and_reaches_two_periods_further() -> None:
    starts = evaluation_range(datetime(2026, 11, 28, 16, 21, 42, tzinfo=UTC), 300, 3)
    assert [s.strftime("%H:%M") for s in starts] == ["15:56", "16:01", "16:06", "16:11", "16:16"]


ALARM_DESCRIPTION = {
    "AlarmName": "bayroute-drift",
    "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:bayroute-drift",
    "AlarmDescription": "drift",
    "AlarmConfigurationUpdatedTimestamp": datetime(2026, 11, 28, 15, 0, 0, 250000, tzinfo=UTC),
    "ActionsEnabled": True,
    "OKActions": ["arn:aws:sns:us-east-1:123456789012:bayroute-oncall"],
    "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:bayroute-oncall"],
    "InsufficientDataActions": [],
    "MetricName": "DriftScore",
    "Namespace": "bayroute",
    "Statistic": "Maximum",
    "Dimensions": [{"Name": "service", "Value": "bayroute-monitor"}],
    "Period": 300,
    "EvaluationPeriods": 3,
    "DatapointsToAlarm": 3,
    "Threshold": 0.25,
    "ComparisonOperator": "GreaterThanOrEqualToThreshold",
    "TreatMissingData": "notBreaching",
}


def test_the_notification_is_cloudwatchs_message() -> None:
    changed = datetime(2026, 11, 28, 16, 21, 42, 617000, tzinfo=UTC)
    message = notification_message(
        ALARM_DESCRIPTION,
        old_state="OK",
        new_state="ALARM",
        reason="Threshold Crossed: ...",
        changed_at=changed,
        region="us-east-1",
    )
    assert list(message) == [
        "AlarmName",
        "AlarmDescription",
        "AWSAccountId",
        "AlarmConfigurationUpdatedTimestamp",
        "NewStateValue",
        "NewStateReason",
        "StateChangeTime",
        "Region",
        "AlarmArn",
        "OldStateValue",
        "OKActions",
        "AlarmActions",
        "InsufficientDataActions",
        "Trigger",
    ]
    assert message["AWSAccountId"] == "123456789012"
    assert message["StateChangeTime"] == "2026-11-28T16:21:42.617+0000"
    assert message["AlarmConfigurationUpdatedTimestamp"] == "2026-11-28T15:00:00.250+0000"
    assert message["Region"] == "US East (N. Virginia)"
    assert (message["OldStateValue"], message["NewStateValue"]) == ("OK", "ALARM")
    trigger = message["Trigger"]
    assert trigger["Statistic"] == "MAXIMUM" and trigger["StatisticType"] == "Statistic"
    assert trigger["Dimensions"] == [{"value": "bayroute-monitor", "name": "service"}]
    assert (trigger["Period"], trigger["EvaluationPeriods"], trigger["DatapointsToAlarm"]) == (300, 3, 3)
    assert trigger["TreatMissingData"] == "- TreatMissingData:                    notBreaching"
    json.dumps(message)  # serializable as published


def test_subject_and_actions() -> None:
    assert (
        notification_subject("bayroute-drift", "ALARM", "us-east-1")
        == 'ALARM: "bayroute-drift" in US East (N. Virginia)'
    )
    assert len(notification_subject("x" * 200, "OK", "eu-west-1")) == 100
    assert actions_for(ALARM_DESCRIPTION, "ALARM") == ["arn:aws:sns:us-east-1:123456789012:bayroute-oncall"]
    assert actions_for(ALARM_DESCRIPTION, "INSUFFICIENT_DATA") == []
    assert actions_for({**ALARM_DESCRIPTION, "ActionsEnabled": False}, "ALARM") == []
    assert (
        format_cloudwatch_time(datetime(2020, 10, 9, 21, 32, 10, 617999, tzinfo=UTC)) == "2020-10-09T21:32:10.617+0000"
    )


def test_the_committed_definitions_load_and_watch_what_the_monitor_publishes() -> None:
    settings = load_settings()
    definitions = {d.name: d for d in load_alarm_definitions()}
    monitored = [d for d in definitions.values() if d.published_by == "monitor_function"]
    assert {d.metric for d in monitored} >= {DRIFT_SCORE, BELOW_THRESHOLD_SHARE}
    for definition in monitored:
        assert definition.namespace == settings.monitoring.namespace
        arguments = definition.put_metric_alarm_arguments(settings, lambda key, name: name, ["arn:topic"])
        # The monitor's series over everything carries exactly this dimension (bayroute.monitoring.publish).
        assert arguments["Dimensions"] == [{"Name": "service", "Value": settings.names.monitor_function}]
        assert arguments["AlarmActions"] == arguments["OKActions"] == ["arn:topic"]


def test_arn_dimensions_resolve_through_the_settings() -> None:
    settings = load_settings()
    definition = AlarmDefinition(
        name="failed",
        namespace="AWS/States",
        metric="ExecutionsFailed",
        dimensions={
            "StateMachineArn": ResourceRef(kind="arn", key="state_machine"),
            "QueueName": ResourceRef(kind="name", key="dead_letter_queue"),
        },
        statistic="Sum",
        period=300,
        evaluation_periods=1,
        datapoints_to_alarm=1,
        threshold=1,
        comparison="GreaterThanThreshold",
        treat_missing_data="notBreaching",
        published_by="aws",
        description="d",
    )

    def arn(key: str, name: str) -> str:
        return local_arn(key, name, region="us-east-1", account="123456789012")

    assert definition.resolved_dimensions(settings, arn) == [
        {
            "Name": "StateMachineArn",
            "Value": f"arn:aws:states:us-east-1:123456789012:stateMachine:{settings.names.state_machine}",
        },
        {"Name": "QueueName", "Value": settings.names.dead_letter_queue},
    ]
    assert local_arn("dead_letter_queue", "q", region="r", account="a") == "arn:aws:sqs:r:a:q"
    with pytest.raises(AlarmDefinitionError, match="no ARN"):
        local_arn("capture_bucket", "b", region="r", account="a")
