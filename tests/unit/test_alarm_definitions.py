"""infra/alarms.json: the one definition of the alarms, validated before anything renders it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bayroute.monitoring.alarms import ALARMS_FILE, AlarmDefinitionError, ResourceRef, load_alarm_definitions

VALID: dict[str, Any] = {
    "name": "bayroute-x",
    "namespace": "AWS/SQS",
    "metric": "ApproximateNumberOfMessagesVisible",
    "dimensions": {"QueueName": {"name": "dead_letter_queue"}},
    "statistic": "Maximum",
    "period": 300,
    "evaluation_periods": 3,
    "datapoints_to_alarm": 2,
    "threshold": 5,
    "comparison": "GreaterThanThreshold",
    "treat_missing_data": "notBreaching",
    "published_by": "aws",
    "description": "x",
}


def write(tmp_path: Path, *alarms: dict[str, Any]) -> Path:
    path = tmp_path / "alarms.json"
    path.write_text(json.dumps({"alarms": list(alarms)}), encoding="utf-8")
    return path


def test_the_committed_definitions_load() -> None:
    alarms = load_alarm_definitions(ALARMS_FILE)
    assert len(alarms) == 6
    failed = next(alarm for alarm in alarms if alarm.name == "bayroute-failed-executions")
    assert failed.dimensions == {"StateMachineArn": ResourceRef(kind="arn", key="state_machine")}
    assert failed.dimension_values(lambda ref: f"{ref.kind}:{ref.key}") == {"StateMachineArn": "arn:state_machine"}


def test_a_valid_definition_loads_with_its_values(tmp_path: Path) -> None:
    (alarm,) = load_alarm_definitions(write(tmp_path, VALID))
    assert (alarm.period, alarm.evaluation_periods, alarm.datapoints_to_alarm, alarm.threshold) == (300, 3, 2, 5.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"statistic": "p99"}, "statistic must be one of"),
        ({"comparison": "Above"}, "comparison must be one of"),
        ({"treat_missing_data": "zero"}, "treat_missing_data"),
        ({"period": 90}, "multiple of 60"),
        ({"evaluation_periods": 0, "datapoints_to_alarm": 0}, "evaluation_periods must be at least 1"),
        ({"datapoints_to_alarm": 4}, "between 1 and evaluation_periods"),
        ({"period": 3600, "evaluation_periods": 25, "datapoints_to_alarm": 1}, "exceeds one day"),
        ({"name": "x" * 256}, "longer than 255"),
        ({"dimensions": {"QueueName": {"name": "no_such_queue"}}}, "names 'no_such_queue'"),
        ({"dimensions": {"QueueName": {"url": "dead_letter_queue"}}}, "refers by 'url'"),
        ({"dimensions": {"QueueName": "bayroute-dead-letter"}}, "dimension 'QueueName' must be"),
        ({"published_by": "someone"}, "published_by must be 'aws' or a settings name key, got 'someone'"),
        ({"published_by": "ingest_function"}, "AWS/ namespaces are published by 'aws'"),
        ({"threshold": True}, "'threshold' has the wrong type"),
        ({"description": ""}, "description must be"),
        ({"extra": 1}, "unknown fields: extra"),
    ],
)
def test_a_bad_definition_is_named_with_its_fault(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(AlarmDefinitionError, match=message):
        load_alarm_definitions(write(tmp_path, {**VALID, **change}))


def test_a_definition_built_in_code_is_checked_like_one_read_from_the_file(tmp_path: Path) -> None:
    (alarm,) = load_alarm_definitions(write(tmp_path, VALID))
    with pytest.raises(AlarmDefinitionError, match="names 'no_such_topic'"):
        replace(alarm, dimensions={"TopicName": ResourceRef(kind="name", key="no_such_topic")})
    with pytest.raises(AlarmDefinitionError, match="got 'p99'"):
        replace(alarm, statistic="p99")


def test_a_missing_field_and_a_repeated_name_are_refused(tmp_path: Path) -> None:
    incomplete = {key: value for key, value in VALID.items() if key != "threshold"}
    with pytest.raises(AlarmDefinitionError, match="needs 'threshold'"):
        load_alarm_definitions(write(tmp_path, incomplete))
    with pytest.raises(AlarmDefinitionError, match="repeated: bayroute-x"):
        load_alarm_definitions(write(tmp_path, VALID, VALID))


def test_a_missing_unreadable_or_shapeless_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(AlarmDefinitionError, match=r"no alarm definitions at .*none\.json"):
        load_alarm_definitions(tmp_path / "none.json")
    path = tmp_path / "alarms.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(AlarmDefinitionError, match="cannot read alarm definitions"):
        load_alarm_definitions(path)
    for shapeless in ('{"alarm": []}', '{"alarms": []}', "[]"):
        path.write_text(shapeless, encoding="utf-8")
        with pytest.raises(AlarmDefinitionError, match="needs a non-empty 'alarms' list"):
            load_alarm_definitions(path)
