"""Starting and stopping the local stack leaves the process as it was; one stack per process."""

from __future__ import annotations

import os

import pytest

from bayroute.config import load_settings
from bayroute.local.stack import LocalStack, StackInProcess

SETTINGS = load_settings(env={})


def test_stopping_restores_the_environment() -> None:
    before = {key: os.environ.get(key) for key in ("AWS_ENDPOINT_URL", "MOTO_PORT", "BAYROUTE_THRESHOLD")}
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False) as running:
        assert os.environ["AWS_ENDPOINT_URL"] == running.aws_endpoint_url
        assert os.environ["BAYROUTE_THRESHOLD"] == repr(SETTINGS.threshold)
    assert {key: os.environ.get(key) for key in before} == before


def test_a_second_stack_in_the_same_process_is_refused_until_the_first_stops() -> None:
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False), pytest.raises(StackInProcess):
        LocalStack(SETTINGS, handlers={}, start_model_endpoint=False).start()
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False) as again:
        assert again.resources is not None


def test_each_stack_starts_from_an_empty_account() -> None:
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False) as first:
        first.client("s3").put_object(Bucket=SETTINGS.names.inbox_bucket, Key="left-over.png", Body=b"x")
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False) as second:
        assert second.client("s3").list_objects_v2(Bucket=SETTINGS.names.inbox_bucket).get("KeyCount") == 0
