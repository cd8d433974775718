"""moto resources named as in the settings, realistic Lambda events, and ways to observe what handlers did.

Shared by the handler integration tests (the tests at the bottom check the support itself). Everything runs
in-process under ``moto.mock_aws``: no network.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bayroute.adapters import signed_s3
from bayroute.adapters.aws import reset_clients
from bayroute.config import Settings, load_settings

REGION = "us-east-1"
ACCOUNT = "123456789012"
OBSERVED_QUEUE = "test-observed-events"
TRIVIAL_DEFINITION = json.dumps({"StartAt": "Accept", "States": {"Accept": {"Type": "Pass", "End": True}}})


@dataclass
class LambdaContextStub:
    """The Lambda context attributes that Powertools reads."""

    function_name: str = "bayroute-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:bayroute-test"
    memory_limit_in_mb: int = 512
    aws_request_id: str = "00000000-0000-0000-0000-000000000001"
    log_group_name: str = "/aws/lambda/bayroute-test"
    log_stream_name: str = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@cache
def _session() -> boto3.session.Session:
    """One session for every test: it caches the service models (a fifth of a second per client otherwise)."""
    return boto3.session.Session(region_name=REGION)


class MotoWorld:
    """The resources the handlers use, created under the settings' names, plus an observer of our events."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        names = settings.names
        session = _session()
        self.s3 = session.client("s3")
        self.sqs = session.client("sqs")
        self.events = session.client("events")
        self.sfn = session.client("stepfunctions")
        self.dynamodb = session.client("dynamodb")

        self.s3.create_bucket(Bucket=names.inbox_bucket)
        self.s3.put_bucket_notification_configuration(
            Bucket=names.inbox_bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
        self.s3.create_bucket(Bucket=names.capture_bucket)
        self.dead_letter_url = self.sqs.create_queue(QueueName=names.dead_letter_queue)["QueueUrl"]
        self.ingest_url = self._queue_with_rule(
            names.ingest_queue,
            names.inbox_rule,
            {"source": ["aws.s3"], "detail": {"bucket": {"name": [names.inbox_bucket]}}},
        )
        self.observed_url = self._queue_with_rule(
            OBSERVED_QUEUE, names.outcomes_rule, {"source": [settings.events.source]}
        )
        self.dynamodb.create_table(
            TableName=names.idempotency_table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.dynamodb.update_time_to_live(
            TableName=names.idempotency_table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"},
        )

    def _queue_with_rule(self, queue: str, rule: str, pattern: dict[str, Any]) -> str:
        url: str = self.sqs.create_queue(QueueName=queue)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        bus = self.settings.names.event_bus
        self.events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
        self.events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}])
        return url

    def create_state_machine(self) -> str:
        """A state machine that only accepts executions: what ingest's tests need of Step Functions."""
        arn: str = self.sfn.create_state_machine(
            name=self.settings.names.state_machine,
            definition=TRIVIAL_DEFINITION,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/bayroute-workflow",
            type="EXPRESS",
        )["stateMachineArn"]
        return arn

    def executions(self, state_machine_arn: str) -> list[dict[str, Any]]:
        listed = self.sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]
        return [self.sfn.describe_execution(executionArn=e["executionArn"]) for e in listed]

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> dict[str, Any]:
        response: dict[str, Any] = self.s3.put_object(
            Bucket=self.settings.names.inbox_bucket, Key=key, Body=body, ContentType=content_type
        )
        return response

    def drain(self, queue_url: str) -> list[dict[str, Any]]:
        """Every message in the queue (received and deleted), as SQS returns them."""
        messages: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return messages
            for message in batch:
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            messages.extend(batch)

    def s3_events(self) -> list[dict[str, Any]]:
        """The EventBridge events that S3 sent for the inbox so far (drained from the ingest queue)."""
        return [json.loads(m["Body"]) for m in self.drain(self.ingest_url)]

    def ingest_batch(self) -> dict[str, Any]:
        """The SQS event that the event source mapping would hand to ingest for what the queue holds now."""
        return sqs_lambda_event(self.drain(self.ingest_url), queue_arn=self.queue_arn(self.settings.names.ingest_queue))

    def published(self, detail_type: str | None = None) -> list[dict[str, Any]]:
        events = [json.loads(m["Body"]) for m in self.drain(self.observed_url)]
        return [e for e in events if detail_type is None or e["detail-type"] == detail_type]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(m["Body"]) for m in self.drain(self.dead_letter_url)]

    def queue_arn(self, name: str) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"

    def capture_keys(self, prefix: str = "") -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.settings.names.capture_bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def capture_object(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.settings.names.capture_bucket, Key=key)["Body"].read()
        return body


def sqs_lambda_event(messages: list[dict[str, Any]], *, queue_arn: str) -> dict[str, Any]:
    """SQS messages (as ReceiveMessage returns them) in the shape Lambda's SQS event source delivers."""
    now_ms = str(int(time.time() * 1000))
    records = []
    for message in messages:
        attributes = message.get("Attributes", {})
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attributes.get("SentTimestamp", now_ms),
                    "SenderId": attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO"),
                    "ApproximateFirstReceiveTimestamp": attributes.get("ApproximateFirstReceiveTimestamp", now_ms),
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(message["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
        )
    return {"Records": records}


def raw_sqs_record(body: str, *, queue_arn: str) -> dict[str, Any]:
    """One SQS record with an arbitrary body (a malformed message)."""
    message = {"MessageId": str(uuid.uuid4()), "ReceiptHandle": str(uuid.uuid4()), "Body": body}
    record: dict[str, Any] = sqs_lambda_event([message], queue_arn=queue_arn)["Records"][0]
    return record


def moto_answers_signed_requests(request: signed_s3.SignedRequest) -> signed_s3.Reply | None:
    """``mock_aws`` answers botocore's requests only, through botocore's ``before-send`` event: this hands it
    the requests of the functions' signed S3 client too, whole (signature and all), as they would go on the wire."""
    from botocore.awsrequest import AWSPreparedRequest, HTTPHeaders
    from moto.core.models import botocore_stubber

    headers = HTTPHeaders()
    for name, value in request.headers.items():
        headers[name] = value
    prepared = AWSPreparedRequest(request.method, request.url, headers, request.body, stream_output=False)
    answer = botocore_stubber.process_request(prepared)
    if answer is None:
        return None
    status, answer_headers, body = answer
    content = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
    return signed_s3.Reply(status, {str(name).lower(): str(value) for name, value in answer_headers.items()}, content)


@contextmanager
def moto_world(monkeypatch: pytest.MonkeyPatch, **settings_env: str) -> Iterator[MotoWorld]:
    """A fresh moto account with the bayroute resources; ``settings_env`` sets ``BAYROUTE_*`` overrides."""
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [moto_answers_signed_requests])
    with mock_aws():
        reset_clients()
        try:
            yield MotoWorld(load_settings())
        finally:
            reset_clients()


def test_s3_events_reach_the_ingest_queue_as_eventbridge_delivers_them(monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_world(monkeypatch) as world:
        world.put("some key é.png", b"data")
        events = world.s3_events()
        # moto, like S3 for a put with tags, follows "Object Created" with "Object Tags Added".
        assert [e["detail-type"] for e in events] == ["Object Created", "Object Tags Added"]
        event = events[0]
        assert (event["source"], event["detail-type"]) == ("aws.s3", "Object Created")
        assert event["detail"]["bucket"]["name"] == world.settings.names.inbox_bucket
        assert event["detail"]["object"]["key"] == "some key é.png"
        assert event["detail"]["object"]["size"] == 4


def test_the_observer_sees_our_events_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_world(monkeypatch) as world:
        world.events.put_events(
            Entries=[
                {"Source": world.settings.events.source, "DetailType": "Ping", "Detail": "{}"},
                {"Source": "someone.else", "DetailType": "Ping", "Detail": "{}"},
            ]
        )
        assert [e["source"] for e in world.published()] == [world.settings.events.source]
