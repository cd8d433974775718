"""Alarms: their one definition (``infra/alarms.json``), evaluation as CloudWatch does it, and notifications.

``load_alarm_definitions`` is the only reader of ``infra/alarms.json``: the AWS template is rendered from what it
returns (``infra/build_template.py``) and the local stack creates its alarms in moto from the same. A dimension's
value names a resource of ``infra/settings.json``'s ``names``: ``{"name": KEY}`` stands for that resource's name,
``{"arn": KEY}`` for its ARN, so each side renders it for its own account (a CloudFormation reference on AWS,
moto's ARN locally). Only standard statistics are allowed (no percentiles): the evaluator below computes them
from raw datapoints.

moto stores alarms and metrics but never evaluates an alarm nor runs its actions, so the local runtime does
both here, against the metrics stored in moto, with CloudWatch's documented rules ("Evaluating an alarm" and
"How alarm state is evaluated when data is missing" in the CloudWatch user guide):

- every evaluation looks at the periods ending at the current minute: period ``k`` is
  ``[end - (k + 1) * period, end - k * period)``, and it retrieves ``EVALUATION_RANGE_EXTRA`` more periods
  than ``EvaluationPeriods`` (N), the evaluation range (the guide's example: 5 periods for N = 3);
- with at least N datapoints in the range, the N most recent are evaluated and missing-data treatment plays
  no part: ALARM when at least ``DatapointsToAlarm`` (M) of them breach, else OK;
- with fewer, every real datapoint in the range counts and missing ones are filled as the treatment says:
  ``breaching`` and ``notBreaching`` fill N in all; ``missing`` and ``ignore`` decide on the real datapoints
  when they can (M breaching: ALARM; any not breaching: OK), and otherwise ``ignore`` keeps the state while
  ``missing`` gives INSUFFICIENT_DATA when the newest period has data (too little history) and ALARM when
  the metric stopped flowing after breaching. With no datapoint at all: INSUFFICIENT_DATA, the current
  state, ALARM and OK respectively.

These rules reproduce every row of the guide's two example tables (3 of 3 and 2 of 3); the unit tests hold
those rows. On a state change, the evaluator sets the state in CloudWatch (``SetAlarmState``, so
``DescribeAlarms`` shows it) and publishes, to each SNS topic among the actions of the new state, the JSON
message CloudWatch publishes, with CloudWatch's subject.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from bayroute.config import REPO_ROOT, Names, Settings

ALARMS_FILE = REPO_ROOT / "infra" / "alarms.json"
EVALUATION_RANGE_EXTRA = 2
SUBJECT_MAX_CHARS = 100
# Where the local stack keeps alarm history in its capture bucket (moto has no DescribeAlarmHistory).
ALARM_HISTORY_PREFIX = "monitor-alarm-history"
_STATISTICS = {
    "SampleCount": "SAMPLE_COUNT",
    "Average": "AVERAGE",
    "Sum": "SUM",
    "Minimum": "MINIMUM",
    "Maximum": "MAXIMUM",
}
_COMPARISONS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanThreshold": (lambda v, t: v > t, "greater than"),
    "GreaterThanOrEqualToThreshold": (lambda v, t: v >= t, "greater than or equal to"),
    "LessThanThreshold": (lambda v, t: v < t, "less than"),
    "LessThanOrEqualToThreshold": (lambda v, t: v <= t, "less than or equal to"),
}
_TREATMENTS = ("missing", "ignore", "breaching", "notBreaching")
REGION_NAMES = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)",
    "eu-west-1": "EU (Ireland)",
    "eu-west-2": "EU (London)",
    "eu-central-1": "EU (Frankfurt)",
    "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
}
# The service in an ARN, by the suffix of a settings name key.
_ARN_SERVICES = {"_queue": "sqs", "_topic": "sns", "_function": "lambda", "state_machine": "states"}
# The settings ``names`` keys a dimension or ``published_by`` may name.
RESOURCE_KEYS = frozenset(field.name for field in fields(Names))
REFERENCE_KINDS = frozenset({"name", "arn"})
AWS_PUBLISHER = "aws"
# CloudWatch's own limits on these fields.
MAX_NAME_CHARS = 255
MAX_DESCRIPTION_CHARS = 1024
MAX_EVALUATION_SECONDS = 86400


class AlarmDefinitionError(ValueError):
    """``infra/alarms.json`` is malformed, names something that does not exist, or has a value CloudWatch refuses."""


class AlarmState(StrEnum):
    OK = "OK"
    ALARM = "ALARM"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


# -- definitions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRef:
    """A dimension value: the ``name`` or ``arn`` of the settings resource ``key``."""

    kind: str
    key: str


@dataclass(frozen=True)
class AlarmDefinition:
    """One alarm of ``infra/alarms.json``; constructing it checks every value against CloudWatch's rules."""

    name: str
    namespace: str
    metric: str
    dimensions: Mapping[str, ResourceRef]
    statistic: str
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: str
    treat_missing_data: str
    published_by: str
    description: str

    def __post_init__(self) -> None:
        label = f"alarm {self.name!r}"
        _check(len(self.name) <= MAX_NAME_CHARS, label, f"name is longer than {MAX_NAME_CHARS} characters")
        _check(
            self.statistic in _STATISTICS,
            label,
            f"statistic must be one of {sorted(_STATISTICS)}, got {self.statistic!r}",
        )
        _check(
            self.comparison in _COMPARISONS,
            label,
            f"comparison must be one of {sorted(_COMPARISONS)}, got {self.comparison!r}",
        )
        _check(
            self.treat_missing_data in _TREATMENTS,
            label,
            f"treat_missing_data must be one of {sorted(_TREATMENTS)}, got {self.treat_missing_data!r}",
        )
        _check(
            self.period > 0 and self.period % 60 == 0,
            label,
            f"period must be a positive multiple of 60 s, got {self.period}",
        )
        _check(self.evaluation_periods >= 1, label, "evaluation_periods must be at least 1")
        _check(
            1 <= self.datapoints_to_alarm <= self.evaluation_periods,
            label,
            "datapoints_to_alarm must be between 1 and evaluation_periods",
        )
        _check(
            self.period * self.evaluation_periods <= MAX_EVALUATION_SECONDS,
            label,
            "period x evaluation_periods exceeds one day",
        )
        _check(
            0 < len(self.description) <= MAX_DESCRIPTION_CHARS,
            label,
            f"description must be 1-{MAX_DESCRIPTION_CHARS} characters",
        )
        _check(
            self.published_by == AWS_PUBLISHER or self.published_by in RESOURCE_KEYS,
            label,
            f"published_by must be {AWS_PUBLISHER!r} or a settings name key, got {self.published_by!r}",
        )
        _check(
            (self.published_by == AWS_PUBLISHER) == self.namespace.startswith("AWS/"),
            label,
            "metrics in AWS/ namespaces are published by 'aws', others by one of bayroute's functions",
        )
        for dimension, reference in self.dimensions.items():
            _check(
                reference.kind in REFERENCE_KINDS,
                label,
                f"dimension {dimension!r} refers by {reference.kind!r}; use 'name' or 'arn'",
            )
            _check(
                reference.key in RESOURCE_KEYS,
                label,
                f"dimension {dimension!r} names {reference.key!r}, which infra/settings.json lacks",
            )

    def dimension_values(self, resolve: Callable[[ResourceRef], Any]) -> dict[str, Any]:
        """``{dimension name: resolve(reference)}``; the caller decides what a name or an ARN is."""
        return {dimension: resolve(reference) for dimension, reference in self.dimensions.items()}

    def resolved_dimensions(self, settings: Settings, arn: Callable[[str, str], str]) -> list[dict[str, str]]:
        """The dimensions with settings names resolved: ``{"name": KEY}`` → the name, ``{"arn": KEY}`` → its ARN."""

        def value(reference: ResourceRef) -> str:
            name = str(getattr(settings.names, reference.key))
            return name if reference.kind == "name" else arn(reference.key, name)

        return [{"Name": dimension, "Value": v} for dimension, v in self.dimension_values(value).items()]

    def put_metric_alarm_arguments(
        self, settings: Settings, arn: Callable[[str, str], str], actions: Sequence[str]
    ) -> dict[str, Any]:
        """``PutMetricAlarm`` arguments, with the on-call topic (``actions``) for ALARM and for OK."""
        return {
            "AlarmName": self.name,
            "AlarmDescription": self.description,
            "Namespace": self.namespace,
            "MetricName": self.metric,
            "Dimensions": self.resolved_dimensions(settings, arn),
            "Statistic": self.statistic,
            "Period": self.period,
            "EvaluationPeriods": self.evaluation_periods,
            "DatapointsToAlarm": self.datapoints_to_alarm,
            "Threshold": float(self.threshold),
            "ComparisonOperator": self.comparison,
            "TreatMissingData": self.treat_missing_data,
            "ActionsEnabled": True,
            "AlarmActions": list(actions),
            "OKActions": list(actions),
        }


def local_arn(key: str, name: str, *, region: str, account: str) -> str:
    """The ARN of a settings resource as the local stack (and AWS) forms it."""
    service = next((s for suffix, s in _ARN_SERVICES.items() if key.endswith(suffix)), None)
    if service == "states":
        return f"arn:aws:states:{region}:{account}:stateMachine:{name}"
    if service == "lambda":
        return f"arn:aws:lambda:{region}:{account}:function:{name}"
    if service in ("sqs", "sns"):
        return f"arn:aws:{service}:{region}:{account}:{name}"
    raise AlarmDefinitionError(f"no ARN form known for settings name {key!r}")


def load_alarm_definitions(path: Path = ALARMS_FILE) -> list[AlarmDefinition]:
    """The alarms of ``path``, checked; every field of an entry is required, and names are unique."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AlarmDefinitionError(f"no alarm definitions at {path}") from None
    except (OSError, ValueError) as exc:
        raise AlarmDefinitionError(f"cannot read alarm definitions {path}: {exc}") from exc
    entries = document.get("alarms") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise AlarmDefinitionError(f"{path} needs a non-empty 'alarms' list")
    alarms = [_parse(entry, index) for index, entry in enumerate(entries)]
    names = [alarm.name for alarm in alarms]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AlarmDefinitionError(f"alarm names must be unique; repeated: {', '.join(duplicates)}")
    return alarms


# The JSON type of each field of an entry; AlarmDefinition checks the values.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "namespace": str,
    "metric": str,
    "dimensions": dict,
    "statistic": str,
    "period": int,
    "evaluation_periods": int,
    "datapoints_to_alarm": int,
    "threshold": (int, float),
    "comparison": str,
    "treat_missing_data": str,
    "published_by": str,
    "description": str,
}


def _parse(entry: Any, index: int) -> AlarmDefinition:
    if not isinstance(entry, dict):
        raise AlarmDefinitionError(f"alarm #{index} is not an object")
    label = f"alarm {entry.get('name', f'#{index}')!r}"
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise AlarmDefinitionError(f"{label} has unknown fields: {', '.join(unknown)}")
    for field, expected in _FIELDS.items():
        value = entry.get(field)
        if value is None:
            raise AlarmDefinitionError(f"{label} needs '{field}'")
        if isinstance(value, bool) or not isinstance(value, expected):
            raise AlarmDefinitionError(f"{label}: '{field}' has the wrong type ({type(value).__name__})")
    return AlarmDefinition(
        name=entry["name"],
        namespace=entry["namespace"],
        metric=entry["metric"],
        dimensions={dimension: _reference(value, label, dimension) for dimension, value in entry["dimensions"].items()},
        statistic=entry["statistic"],
        period=entry["period"],
        evaluation_periods=entry["evaluation_periods"],
        datapoints_to_alarm=entry["datapoints_to_alarm"],
        threshold=float(entry["threshold"]),
        comparison=entry["comparison"],
        treat_missing_data=entry["treat_missing_data"],
        published_by=entry["published_by"],
        description=entry["description"],
    )


def _reference(value: Any, label: str, dimension: str) -> ResourceRef:
    if not isinstance(value, dict) or len(value) != 1:
        raise AlarmDefinitionError(f'{label}: dimension {dimension!r} must be {{"name": KEY}} or {{"arn": KEY}}')
    ((kind, key),) = value.items()
    return ResourceRef(kind=kind, key=key)


def _check(condition: bool, label: str, message: str) -> None:
    if not condition:
        raise AlarmDefinitionError(f"{label}: {message}")


# -- evaluation -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Datapoint:
    start: datetime  # the period's start
    value: float | None  # None: no data in the period


@dataclass(frozen=True)
class Evaluation:
    state: AlarmState
    reason: str
    evaluated: tuple[Datapoint, ...]  # the real datapoints that decided, newest first


def breaches(value: float, comparison: str, threshold: float) -> bool:
    return _COMPARISONS[comparison][0](value, threshold)


def evaluate(
    points: Sequence[Datapoint],
    *,
    comparison: str,
    threshold: float,
    evaluation_periods: int,
    datapoints_to_alarm: int,
    treat_missing_data: str,
    current: AlarmState,
) -> Evaluation:
    """The alarm state for the evaluation range ``points`` (oldest first), by the rules in the module docstring."""
    n, m = evaluation_periods, datapoints_to_alarm
    present = [p for p in points if p.value is not None]

    def breaching(p: Datapoint) -> bool:
        return p.value is not None and breaches(p.value, comparison, threshold)

    def outcome(state: AlarmState, used: Sequence[Datapoint], filled: int = 0, filled_as: str = "") -> Evaluation:
        reason = _reason(state, used, m, n, comparison, threshold, filled, filled_as)
        return Evaluation(state, reason, tuple(reversed(used)))

    if len(present) >= n:
        used = present[-n:]
        state = AlarmState.ALARM if sum(map(breaching, used)) >= m else AlarmState.OK
        return outcome(state, used)
    count = sum(map(breaching, present))
    fill = n - len(present)
    if treat_missing_data == "breaching":
        return outcome(AlarmState.ALARM if count + fill >= m else AlarmState.OK, present, fill, "Breaching")
    if treat_missing_data == "notBreaching":
        return outcome(AlarmState.ALARM if count >= m else AlarmState.OK, present, fill, "NonBreaching")
    if not present:
        if treat_missing_data == "ignore":
            return Evaluation(current, "no datapoints: the state is kept (missing data ignored)", ())
        return outcome(AlarmState.INSUFFICIENT_DATA, present, fill, "Missing")
    if count >= m:
        return outcome(AlarmState.ALARM, present)
    if count < len(present):
        return outcome(AlarmState.OK, present)
    if treat_missing_data == "ignore":
        return Evaluation(current, "too few datapoints to decide: the state is kept (missing data ignored)", ())
    if points and points[-1].value is None:
        return outcome(AlarmState.ALARM, present)
    return outcome(AlarmState.INSUFFICIENT_DATA, present, fill, "Missing")


def _reason(
    state: AlarmState,
    used: Sequence[Datapoint],
    m: int,
    n: int,
    comparison: str,
    threshold: float,
    filled: int,
    filled_as: str,
) -> str:
    """A ``NewStateReason`` in CloudWatch's words (datapoints newest first, ``dd/mm/yy HH:MM:SS``)."""
    relation = _COMPARISONS[comparison][1]
    listed = ", ".join(f"{p.value!r} ({p.start:%d/%m/%y %H:%M:%S})" for p in reversed(used) if p.value is not None)
    if not used:
        return (
            f"Threshold Crossed: no datapoints were received for {n} period{'s' if n != 1 else ''} and "
            f"{filled} missing datapoint{'s were' if filled != 1 else ' was'} treated as [{filled_as}]."
        )
    breaching_count = sum(1 for p in used if p.value is not None and breaches(p.value, comparison, threshold))
    shown = breaching_count if state is AlarmState.ALARM else len(used) - breaching_count
    verb = "was" if len(used) == 1 else "were"
    negation = "" if state is AlarmState.ALARM else "not "
    text = (
        f"Threshold Crossed: {shown} out of the last {len(used)} datapoint{'s' if len(used) != 1 else ''} "
        f"[{listed}] {verb} {negation}{relation} the threshold ({float(threshold)!r})"
    )
    if filled:
        text += f" ({filled} missing datapoint{'s were' if filled != 1 else ' was'} treated as [{filled_as}])"
    if state is AlarmState.ALARM:
        text += f" (minimum {m} datapoint{'s' if m != 1 else ''} for OK -> ALARM transition)."
    else:
        text += f" (minimum {n - m + 1} datapoint{'s' if n - m + 1 != 1 else ''} for ALARM -> OK transition)."
    return text


def evaluation_end(now: datetime) -> datetime:
    """Alarms are evaluated every minute on the periods that end at the current minute."""
    return now.astimezone(UTC).replace(second=0, microsecond=0)


def evaluation_range(now: datetime, period: int, evaluation_periods: int) -> list[datetime]:
    """The start of each period of the evaluation range, oldest first."""
    end = evaluation_end(now)
    count = evaluation_periods + EVALUATION_RANGE_EXTRA
    return [end - timedelta(seconds=period * (count - i)) for i in range(count)]


# -- notifications ----------------------------------------------------------------------------------------------


def format_cloudwatch_time(when: datetime) -> str:
    """``2020-10-09T21:32:10.617+0000``: the time format of CloudWatch's alarm notifications."""
    moment = when.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}+0000"


def notification_message(
    alarm: Mapping[str, Any], *, old_state: str, new_state: str, reason: str, changed_at: datetime, region: str
) -> dict[str, Any]:
    """The JSON that CloudWatch publishes to an alarm's SNS topics on a state change.

    ``alarm`` is the alarm as ``DescribeAlarms`` returns it (a ``MetricAlarms`` entry).
    """
    arn = str(alarm["AlarmArn"])
    account = arn.split(":")[4]
    updated = alarm.get("AlarmConfigurationUpdatedTimestamp")
    return {
        "AlarmName": alarm["AlarmName"],
        "AlarmDescription": alarm.get("AlarmDescription"),
        "AWSAccountId": account,
        "AlarmConfigurationUpdatedTimestamp": format_cloudwatch_time(updated) if updated else None,
        "NewStateValue": new_state,
        "NewStateReason": reason,
        "StateChangeTime": format_cloudwatch_time(changed_at),
        "Region": REGION_NAMES.get(region, region),
        "AlarmArn": arn,
        "OldStateValue": old_state,
        "OKActions": list(alarm.get("OKActions", [])),
        "AlarmActions": list(alarm.get("AlarmActions", [])),
        "InsufficientDataActions": list(alarm.get("InsufficientDataActions", [])),
        "Trigger": {
            "MetricName": alarm.get("MetricName"),
            "Namespace": alarm.get("Namespace"),
            "StatisticType": "Statistic",
            "Statistic": _STATISTICS.get(str(alarm.get("Statistic")), str(alarm.get("Statistic")).upper()),
            "Unit": alarm.get("Unit"),
            "Dimensions": [{"value": d["Value"], "name": d["Name"]} for d in alarm.get("Dimensions", [])],
            "Period": alarm.get("Period"),
            "EvaluationPeriods": alarm.get("EvaluationPeriods"),
            "DatapointsToAlarm": alarm.get("DatapointsToAlarm", alarm.get("EvaluationPeriods")),
            "ComparisonOperator": alarm.get("ComparisonOperator"),
            "Threshold": alarm.get("Threshold"),
            # CloudWatch's own rendering of the setting, padding included.
            "TreatMissingData": f"- TreatMissingData:{' ' * 20}{alarm.get('TreatMissingData', 'missing')}",
            "EvaluateLowSampleCountPercentile": alarm.get("EvaluateLowSampleCountPercentile", ""),
        },
    }


def notification_subject(alarm_name: str, new_state: str, region: str) -> str:
    """``ALARM: "name" in US East (N. Virginia)``, cut to SNS's 100 characters."""
    subject = f'{new_state}: "{alarm_name}" in {REGION_NAMES.get(region, region)}'
    return subject if len(subject) <= SUBJECT_MAX_CHARS else subject[: SUBJECT_MAX_CHARS - 3] + "..."


def actions_for(alarm: Mapping[str, Any], state: str) -> list[str]:
    if not alarm.get("ActionsEnabled", True):
        return []
    key = {"ALARM": "AlarmActions", "OK": "OKActions", "INSUFFICIENT_DATA": "InsufficientDataActions"}[state]
    return [str(arn) for arn in alarm.get(key, [])]


# -- the evaluator ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    alarm_name: str
    old_state: str
    new_state: str
    reason: str
    changed_at: datetime
    notified: tuple[str, ...]  # the topic ARNs the notification went to

    def to_dict(self) -> dict[str, Any]:
        return {
            "alarm_name": self.alarm_name,
            "old_state": self.old_state,
            "new_state": self.new_state,
            "reason": self.reason,
            "changed_at": self.changed_at.isoformat(),
            "notified": list(self.notified),
        }


class AlarmHistory(Protocol):
    def record(self, transition: Transition) -> None: ...


class AlarmEvaluator:
    """Evaluates every metric alarm of a CloudWatch API (moto's) and runs its SNS actions on state changes."""

    def __init__(
        self,
        cloudwatch: Any,
        sns: Any,
        *,
        region: str,
        history: AlarmHistory | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._cloudwatch = cloudwatch
        self._sns = sns
        self._region = region
        self._history = history
        self._clock = clock

    def alarms(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        paginator = self._cloudwatch.get_paginator("describe_alarms")
        arguments: dict[str, Any] = {"AlarmTypes": ["MetricAlarm"]}
        if names is not None:
            arguments["AlarmNames"] = list(names)
        return [alarm for page in paginator.paginate(**arguments) for alarm in page.get("MetricAlarms", [])]

    def datapoints(self, alarm: Mapping[str, Any], now: datetime) -> list[Datapoint]:
        """The alarm statistic of each period of the evaluation range, oldest first (exact dimensions)."""
        period = int(alarm["Period"])
        starts = evaluation_range(now, period, int(alarm["EvaluationPeriods"]))
        answer = self._cloudwatch.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "m",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": alarm["Namespace"],
                            "MetricName": alarm["MetricName"],
                            "Dimensions": alarm.get("Dimensions", []),
                        },
                        "Period": period,
                        "Stat": alarm["Statistic"],
                    },
                    "ReturnData": True,
                }
            ],
            StartTime=starts[0],
            EndTime=starts[-1] + timedelta(seconds=period),
        )
        values: dict[datetime, float] = {}
        for result in answer.get("MetricDataResults", []):
            for stamp, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=False):
                values[stamp.astimezone(UTC)] = float(value)
        return [Datapoint(start, values.get(start)) for start in starts]

    def evaluate_all(self, now: datetime | None = None) -> list[Transition]:
        """Evaluate every alarm once; returns the state changes (each already set and notified)."""
        now = now or self._clock()
        transitions = []
        for alarm in self.alarms():
            if "MetricName" not in alarm or "Statistic" not in alarm:
                # Metric math and percentile alarms: moto computes neither, and infra/alarms.json defines none.
                continue
            transition = self.evaluate_alarm(alarm, now)
            if transition is not None:
                transitions.append(transition)
        return transitions

    def evaluate_alarm(self, alarm: Mapping[str, Any], now: datetime) -> Transition | None:
        current = AlarmState(str(alarm.get("StateValue", AlarmState.INSUFFICIENT_DATA)))
        result = evaluate(
            self.datapoints(alarm, now),
            comparison=str(alarm["ComparisonOperator"]),
            threshold=float(alarm["Threshold"]),
            evaluation_periods=int(alarm["EvaluationPeriods"]),
            datapoints_to_alarm=int(alarm.get("DatapointsToAlarm") or alarm["EvaluationPeriods"]),
            treat_missing_data=str(alarm.get("TreatMissingData") or "missing"),
            current=current,
        )
        if result.state is current:
            return None
        self._cloudwatch.set_alarm_state(
            AlarmName=alarm["AlarmName"],
            StateValue=result.state.value,
            StateReason=result.reason[:1023],
            StateReasonData=json.dumps(self._reason_data(alarm, result, now)),
        )
        message = notification_message(
            alarm,
            old_state=current.value,
            new_state=result.state.value,
            reason=result.reason,
            changed_at=now,
            region=self._region,
        )
        notified = []
        for arn in actions_for(alarm, result.state.value):
            if arn.startswith("arn:aws:sns:"):
                self._sns.publish(
                    TopicArn=arn,
                    Subject=notification_subject(str(alarm["AlarmName"]), result.state.value, self._region),
                    Message=json.dumps(message),
                )
                notified.append(arn)
        transition = Transition(
            alarm_name=str(alarm["AlarmName"]),
            old_state=current.value,
            new_state=result.state.value,
            reason=result.reason,
            changed_at=now,
            notified=tuple(notified),
        )
        if self._history is not None:
            self._history.record(transition)
        return transition

    @staticmethod
    def _reason_data(alarm: Mapping[str, Any], result: Evaluation, now: datetime) -> dict[str, Any]:
        """``StateReasonData`` as CloudWatch writes it for a metric alarm."""
        data: dict[str, Any] = {
            "version": "1.0",
            "queryDate": format_cloudwatch_time(now),
            "statistic": alarm["Statistic"],
            "period": alarm["Period"],
            "recentDatapoints": [p.value for p in result.evaluated],
            "threshold": alarm["Threshold"],
        }
        if result.evaluated:
            data["startDate"] = format_cloudwatch_time(result.evaluated[-1].start)
            data["evaluatedDatapoints"] = [
                {"timestamp": format_cloudwatch_time(p.start), "value": p.value} for p in result.evaluated
            ]
        return data


class S3AlarmHistory:
    """Alarm history where ``DescribeAlarmHistory`` is missing (moto): one JSON object per transition."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def record(self, transition: Transition) -> None:
        stamp = transition.changed_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        # The recording clock orders changes evaluated for the same instant, and keeps their keys apart.
        self._s3.put_object(
            Bucket=self.bucket,
            Key=f"{self.prefix}/{stamp}-{time.time_ns():020d}-{transition.alarm_name}.json",
            Body=json.dumps(transition.to_dict()).encode("utf-8"),
            ContentType="application/json",
        )

    def transitions(self) -> list[dict[str, Any]]:
        """Every recorded transition, oldest first."""
        paginator = self._s3.get_paginator("list_objects_v2")
        keys = [
            item["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/")
            for item in page.get("Contents", [])
        ]
        return [json.loads(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()) for key in sorted(keys)]
