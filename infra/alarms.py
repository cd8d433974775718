"""bayroute's CloudWatch alarms, defined once in ``infra/alarms.json`` and validated here.

The AWS template is rendered from these definitions (``infra/build_template.py``); the local runtime's alarm
evaluator reads the same file. A dimension's value names a resource of ``infra/settings.json``'s ``names``:
``{"name": KEY}`` stands for that resource's name, ``{"arn": KEY}`` for its ARN, so each side renders it
for its own account (a CloudFormation reference on AWS, moto's ARN locally).

Only standard statistics are allowed (no percentiles): the local evaluator computes them from raw datapoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALARMS_FILE = Path(__file__).resolve().parent / "alarms.json"

STATISTICS = frozenset({"SampleCount", "Average", "Sum", "Minimum", "Maximum"})
COMPARISONS = frozenset(
    {"GreaterThanThreshold", "GreaterThanOrEqualToThreshold", "LessThanThreshold", "LessThanOrEqualToThreshold"}
)
MISSING_DATA = frozenset({"breaching", "notBreaching", "ignore", "missing"})
REFERENCE_KINDS = frozenset({"name", "arn"})
AWS_PUBLISHER = "aws"
# CloudWatch's own limits on these fields.
MAX_DESCRIPTION_CHARS = 1024
MAX_NAME_CHARS = 255


class AlarmDefinitionError(ValueError):
    """``alarms.json`` is malformed or names something that does not exist."""


@dataclass(frozen=True)
class ResourceRef:
    """A dimension value: the ``name`` or ``arn`` of the settings resource ``key``."""

    kind: str
    key: str


@dataclass(frozen=True)
class AlarmDefinition:
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

    def dimension_values(self, resolve: Callable[[ResourceRef], Any]) -> dict[str, Any]:
        """``{dimension name: resolve(reference)}``; the caller decides what a name or an ARN is."""
        return {dimension: resolve(ref) for dimension, ref in self.dimensions.items()}


def load_alarms(resource_keys: Sequence[str], path: Path = ALARMS_FILE) -> list[AlarmDefinition]:
    """The alarms of ``path``, checked; ``resource_keys`` are the settings ``names`` keys references may use."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AlarmDefinitionError(f"cannot read alarm definitions {path}: {exc}") from exc
    entries = document.get("alarms") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise AlarmDefinitionError(f"{path} needs a non-empty 'alarms' list")
    alarms = [_parse(entry, index, set(resource_keys)) for index, entry in enumerate(entries)]
    names = [alarm.name for alarm in alarms]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AlarmDefinitionError(f"alarm names must be unique; repeated: {', '.join(duplicates)}")
    return alarms


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


def _parse(entry: Any, index: int, resource_keys: set[str]) -> AlarmDefinition:
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
    _check(len(entry["name"]) <= MAX_NAME_CHARS, label, f"name is longer than {MAX_NAME_CHARS} characters")
    _check(entry["statistic"] in STATISTICS, label, f"statistic must be one of {sorted(STATISTICS)}")
    _check(entry["comparison"] in COMPARISONS, label, f"comparison must be one of {sorted(COMPARISONS)}")
    _check(
        entry["treat_missing_data"] in MISSING_DATA, label, f"treat_missing_data must be one of {sorted(MISSING_DATA)}"
    )
    _check(entry["period"] > 0 and entry["period"] % 60 == 0, label, "period must be a positive multiple of 60 s")
    _check(entry["evaluation_periods"] >= 1, label, "evaluation_periods must be at least 1")
    _check(
        1 <= entry["datapoints_to_alarm"] <= entry["evaluation_periods"],
        label,
        "datapoints_to_alarm must be between 1 and evaluation_periods",
    )
    _check(0 < len(entry["description"]) <= MAX_DESCRIPTION_CHARS, label, "description must be 1-1024 characters")
    publisher = entry["published_by"]
    _check(
        publisher == AWS_PUBLISHER or publisher in resource_keys,
        label,
        f"published_by must be {AWS_PUBLISHER!r} or a settings name key, got {publisher!r}",
    )
    _check(
        (publisher == AWS_PUBLISHER) == entry["namespace"].startswith("AWS/"),
        label,
        "metrics in AWS/ namespaces are published by 'aws', others by one of bayroute's functions",
    )
    return AlarmDefinition(
        name=entry["name"],
        namespace=entry["namespace"],
        metric=entry["metric"],
        dimensions={
            dimension: _reference(value, label, dimension, resource_keys)
            for dimension, value in entry["dimensions"].items()
        },
        statistic=entry["statistic"],
        period=entry["period"],
        evaluation_periods=entry["evaluation_periods"],
        datapoints_to_alarm=entry["datapoints_to_alarm"],
        threshold=float(entry["threshold"]),
        comparison=entry["comparison"],
        treat_missing_data=entry["treat_missing_data"],
        published_by=publisher,
        description=entry["description"],
    )


def _reference(value: Any, label: str, dimension: str, resource_keys: set[str]) -> ResourceRef:
    if not isinstance(value, dict) or len(value) != 1:
        raise AlarmDefinitionError(f'{label}: dimension {dimension!r} must be {{"name": KEY}} or {{"arn": KEY}}')
    ((kind, key),) = value.items()
    _check(kind in REFERENCE_KINDS, label, f"dimension {dimension!r} refers by {kind!r}; use 'name' or 'arn'")
    _check(key in resource_keys, label, f"dimension {dimension!r} names {key!r}, which infra/settings.json lacks")
    return ResourceRef(kind=kind, key=key)


def _check(condition: bool, label: str, message: str) -> None:
    if not condition:
        raise AlarmDefinitionError(f"{label}: {message}")
