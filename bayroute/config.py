"""Settings: resource names, routing and limits, defined once in ``infra/settings.json``.

The local runtime and the handlers read them here; the AWS template reads the same file (its names and
defaults are checked against it). A deployed function gets single values through environment variables
named ``BAYROUTE_<KEY>`` (``BAYROUTE_INBOX_BUCKET``, ``BAYROUTE_THRESHOLD``, ...), which override the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_FILE = REPO_ROOT / "infra" / "settings.json"
ENV_PREFIX = "BAYROUTE_"
MAX_SQS_BATCH = 10


@dataclass(frozen=True)
class Names:
    inbox_bucket: str
    capture_bucket: str
    ingest_queue: str
    dead_letter_queue: str
    outcomes_queue: str
    oncall_topic: str
    idempotency_table: str
    state_machine: str
    event_bus: str
    inbox_rule: str
    outcomes_rule: str
    endpoint_name: str
    endpoint_variant: str
    ingest_function: str
    serialize_function: str
    infer_function: str
    threshold_function: str
    monitor_function: str
    oncall_queue: str


@dataclass(frozen=True)
class Prefixes:
    capture: str
    results: str
    staging: str


@dataclass(frozen=True)
class EventNames:
    source: str
    classified_detail_type: str
    dead_lettered_detail_type: str


@dataclass(frozen=True)
class Route:
    bay: str
    orders: str


@dataclass(frozen=True)
class Limits:
    max_object_bytes: int
    max_image_pixels: int
    max_payload_bytes: int
    max_request_bytes: int


@dataclass(frozen=True)
class Monitoring:
    namespace: str
    window_seconds: int
    schedule: str
    watermark_key: str


@dataclass(frozen=True)
class Settings:
    names: Names
    prefixes: Prefixes
    events: EventNames
    threshold: float
    routing_table: Mapping[str, Route]
    limits: Limits
    model_input_size: int
    model_path: Path
    endpoint_host: str
    endpoint_port: int
    endpoint_timeout_seconds: float
    inference_backend: str
    monitoring: Monitoring
    # Messages per invocation of ingest by its queue (the event source mapping's BatchSize, the local poller's).
    ingest_batch_size: int
    # Full URL of the model endpoint for the "http" backend; derived from host and port when unset.
    endpoint_url_override: str | None = field(default=None)

    @property
    def endpoint_url(self) -> str:
        return self.endpoint_url_override or f"http://{self.endpoint_host}:{self.endpoint_port}"

    def with_endpoint_url(self, url: str) -> Settings:
        return replace(self, endpoint_url_override=url)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in another process (a deployed function)."""
        env = {f"{ENV_PREFIX}{key.upper()}": value for key, value in vars(self.names).items()}
        env.update({f"{ENV_PREFIX}{key.upper()}": str(value) for key, value in vars(self.limits).items()})
        env[f"{ENV_PREFIX}THRESHOLD"] = repr(self.threshold)
        env[f"{ENV_PREFIX}ROUTING_TABLE"] = json.dumps(
            {label: vars(route) for label, route in self.routing_table.items()}
        )
        env[f"{ENV_PREFIX}ENDPOINT_URL"] = self.endpoint_url
        env[f"{ENV_PREFIX}INFERENCE_BACKEND"] = self.inference_backend
        env[f"{ENV_PREFIX}MODEL_PATH"] = str(self.model_path)
        return env


class SettingsError(ValueError):
    """The settings file or an override is malformed."""


def _override(section: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Replace each value of a flat section by ``BAYROUTE_<KEY>`` when set, keeping the file's type."""
    merged: dict[str, Any] = {}
    for key, default in section.items():
        raw = env.get(f"{ENV_PREFIX}{key.upper()}")
        if raw is None:
            merged[key] = default
            continue
        try:
            merged[key] = type(default)(raw)
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}{key.upper()}={raw!r} is not a valid {type(default).__name__}") from exc
    return merged


def _routing_table(raw: Mapping[str, Any]) -> dict[str, Route]:
    try:
        return {label: Route(bay=str(route["bay"]), orders=str(route["orders"])) for label, route in raw.items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(f"routing table entries need 'bay' and 'orders': {raw!r}") from exc


def load_settings(env: Mapping[str, str] | None = None, path: Path = SETTINGS_FILE) -> Settings:
    """Settings from the file, with ``BAYROUTE_*`` environment overrides applied."""
    env = os.environ if env is None else env
    raw = _read_file(path)
    threshold_raw = env.get(f"{ENV_PREFIX}THRESHOLD", raw["routing"]["threshold"])
    try:
        threshold = float(threshold_raw)
    except ValueError as exc:
        raise SettingsError(f"threshold {threshold_raw!r} is not a number") from exc
    if not 0.0 < threshold <= 1.0:
        raise SettingsError(f"threshold must be in (0, 1], got {threshold}")
    table_raw = env.get(f"{ENV_PREFIX}ROUTING_TABLE")
    table = _routing_table(json.loads(table_raw) if table_raw else raw["routing"]["table"])
    model_path = Path(env.get(f"{ENV_PREFIX}MODEL_PATH", raw["model"]["default_path"]))
    if not model_path.is_absolute():
        model_path = REPO_ROOT / model_path
    backend = env.get(f"{ENV_PREFIX}INFERENCE_BACKEND", raw["inference_backend"])
    if backend not in {"http", "sagemaker", "lambda"}:
        raise SettingsError(f"inference backend must be http, sagemaker or lambda, got {backend!r}")
    ingest_batch_size = raw["ingest"]["batch_size"]
    # One SQS ReceiveMessage returns at most 10 messages: a bigger batch would need a batching window.
    if not isinstance(ingest_batch_size, int) or not 1 <= ingest_batch_size <= MAX_SQS_BATCH:
        raise SettingsError(
            f"ingest batch_size must be an integer from 1 to {MAX_SQS_BATCH}, got {ingest_batch_size!r}"
        )
    return Settings(
        names=Names(**_override(raw["names"], env)),
        prefixes=Prefixes(**raw["prefixes"]),
        events=EventNames(**raw["events"]),
        threshold=threshold,
        routing_table=table,
        limits=Limits(**_override(raw["limits"], env)),
        model_input_size=int(raw["model"]["input_size"]),
        model_path=model_path,
        endpoint_host=raw["endpoint"]["host"],
        endpoint_port=int(raw["endpoint"]["port"]),
        endpoint_timeout_seconds=float(raw["endpoint"]["timeout_seconds"]),
        inference_backend=backend,
        monitoring=Monitoring(**_override(raw["monitoring"], env)),
        ingest_batch_size=ingest_batch_size,
        endpoint_url_override=env.get(f"{ENV_PREFIX}ENDPOINT_URL"),
    )


@cache
def _read_file(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data
