from __future__ import annotations

import json
from pathlib import Path

import pytest

from bayroute.config import SETTINGS_FILE, SettingsError, load_settings


def test_file_defaults_route_bicycles_near_and_motorcycles_far() -> None:
    settings = load_settings(env={})
    assert settings.threshold == 0.95
    assert settings.routing_table["bicycle"].bay == "near"
    assert settings.routing_table["motorcycle"].orders == "far"
    assert settings.endpoint_url == "http://127.0.0.1:8080"


def test_environment_overrides_single_values_with_the_files_types() -> None:
    settings = load_settings(
        env={
            "BAYROUTE_THRESHOLD": "0.8",
            "BAYROUTE_INBOX_BUCKET": "other-inbox",
            "BAYROUTE_MAX_OBJECT_BYTES": "1000",
            "BAYROUTE_ROUTING_TABLE": json.dumps({"bicycle": {"bay": "B1", "orders": "near"}}),
            "BAYROUTE_ENDPOINT_URL": "http://127.0.0.1:9999",
        }
    )
    assert settings.threshold == 0.8
    assert settings.names.inbox_bucket == "other-inbox"
    assert settings.limits.max_object_bytes == 1000
    assert list(settings.routing_table) == ["bicycle"]
    assert settings.endpoint_url == "http://127.0.0.1:9999"


def test_to_env_round_trips_through_load_settings() -> None:
    original = load_settings(env={"BAYROUTE_THRESHOLD": "0.9"}).with_endpoint_url("http://127.0.0.1:1234")
    again = load_settings(env=original.to_env())
    assert again == original


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BAYROUTE_THRESHOLD": "high"}, "not a number"),
        ({"BAYROUTE_THRESHOLD": "1.5"}, "threshold must be in"),
        ({"BAYROUTE_MAX_OBJECT_BYTES": "ten"}, "BAYROUTE_MAX_OBJECT_BYTES"),
        ({"BAYROUTE_ROUTING_TABLE": '{"bicycle": {"bay": "near"}}'}, "need 'bay' and 'orders'"),
        ({"BAYROUTE_INFERENCE_BACKEND": "gpu"}, "inference backend"),
    ],
)
def test_malformed_overrides_are_rejected_with_a_specific_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_to_env_carries_the_limits_to_the_handlers() -> None:
    settings = load_settings(env={"BAYROUTE_MAX_OBJECT_BYTES": "1234"})
    assert settings.to_env()["BAYROUTE_MAX_OBJECT_BYTES"] == "1234"
    assert load_settings(env=settings.to_env()).limits == settings.limits


@pytest.mark.parametrize("batch_size", [0, 11, 2.5, "10"])
def test_an_ingest_batch_size_sqs_cannot_deliver_is_rejected(tmp_path: Path, batch_size: object) -> None:
    raw = json.loads(SETTINGS_FILE.read_text())
    raw["ingest"]["batch_size"] = batch_size
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SettingsError, match="ingest batch_size must be an integer from 1 to 10"):
        load_settings(env={}, path=path)
