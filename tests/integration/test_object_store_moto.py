"""``ObjectStore``'s conditional create against moto's S3: the call threshold's result record relies on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bayroute.adapters.aws import ObjectStore

BUCKET = "bayroute-test-results"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_create_json_writes_once_and_leaves_the_first_document(s3: Any) -> None:
    store = ObjectStore(s3)
    assert store.create_json(BUCKET, "results/a.json", {"status": "routed", "bay": "near"})
    assert not store.create_json(BUCKET, "results/a.json", {"status": "routed", "bay": "far"})
    assert store.get_json(BUCKET, "results/a.json") == {"status": "routed", "bay": "near"}
    # An unconditional put still replaces it (the repair path of a record that was never published).
    store.put_json(BUCKET, "results/a.json", {"status": "routed", "bay": "far"})
    assert store.get_json(BUCKET, "results/a.json") == {"status": "routed", "bay": "far"}


def test_create_json_in_a_missing_bucket_is_an_error_not_a_false(s3: Any) -> None:
    with pytest.raises(s3.exceptions.NoSuchBucket):
        ObjectStore(s3).create_json("bayroute-no-such-bucket", "results/a.json", {})
