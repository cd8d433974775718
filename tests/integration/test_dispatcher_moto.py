"""The local SQS poller against moto's SQS: batches of the configured size, failures left in the queue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bayroute.local.dispatcher import SqsDispatcher
from bayroute.local.lambda_api import LocalFunction

REGION = "us-east-1"


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name=REGION)


def test_each_invocation_gets_at_most_the_batch_size_and_failed_records_stay(sqs: Any) -> None:
    queue_url = sqs.create_queue(QueueName="ingest", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    for index in range(7):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"n": index}))
    batches: list[list[int]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        records = event["Records"]
        batches.append([json.loads(record["body"])["n"] for record in records])
        failed = [record["messageId"] for record in records if json.loads(record["body"])["n"] == 4]
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}

    dispatcher = SqsDispatcher(sqs, queue_url, LocalFunction("ingest", handler), REGION, batch_size=3)
    while dispatcher.poll_once():
        pass
    assert all(len(batch) <= 3 for batch in batches) and len(batches) >= 3
    assert sorted(n for batch in batches for n in batch) == list(range(7))
    # Only the reported failure is still in the queue (invisible until its visibility timeout ends).
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert (attributes["ApproximateNumberOfMessages"], attributes["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "1",
    )
