"""``fastpath.moto_application`` answers as moto's own Flask applications do: the same status, headers and body
for the calls the local stack makes and for their errors, request for request, side by side."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.core.utils import convert_to_flask_response
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.test import Client

from bayroute.local import fastpath

REGION = "us-east-1"
# Served in process only (``fastpath.serve_in_process``): nothing listens on these ports.
FLASK_URL, FLASKLESS_URL = "http://127.0.0.1:1", "http://127.0.0.1:2"
Answer = tuple[int, list[tuple[str, str]], bytes]
# Differ between any two answers: request ids, clocks.
VOLATILE_HEADERS = {"date", "x-amzn-requestid", "x-amz-request-id", "x-amz-id-2", "last-modified", "x-amz-crc32"}
VOLATILE_BODY = [
    re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),  # request and message ids
    re.compile(rb"[0-9a-zA-Z+/=]{40,}"),  # receipt handles
    re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"),  # ISO stamps
    re.compile(rb"\d{10}(\.\d+)?"),  # epoch stamps
]


class _Recorded:
    """A WSGI application that keeps every answer it gives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.answers: list[Answer] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen: dict[str, Any] = {}

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen["status"], seen["headers"] = int(status.split(" ", 1)[0]), list(headers)
            return start_response(status, headers, exc_info)

        body = b"".join(self.app(environ, recording_start_response))
        self.answers.append((seen["status"], seen["headers"], body))
        return [body]


def _normalised(answer: Answer, url: str, name: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """``answer`` without what differs between the two sides: their URLs, resource names, ids and clocks."""
    status, headers, body = answer
    # A length that is the body's own stands for itself (stamps in bodies vary in length); any other (a HEAD's)
    # must be equal.
    kept = sorted(
        (k.lower(), "the body's" if k.lower() == "content-length" and v == str(len(body)) else v)
        for k, v in headers
        if k.lower() not in VOLATILE_HEADERS
    )
    kept = [(k, v.replace(url, "URL").replace(name, "NAME")) for k, v in kept]
    body = body.replace(url.encode(), b"URL").replace(name.encode(), b"NAME")
    for pattern in VOLATILE_BODY:
        body = pattern.sub(b"~", body)
    return status, kept, body


def _client(service: str, url: str) -> Any:
    session = boto3.session.Session(aws_access_key_id="ak", aws_secret_access_key="sk", region_name=REGION)
    return session.client(service, endpoint_url=url, config=Config(retries={"total_max_attempts": 1}))


def _scenario(url: str, name: str) -> None:
    """The local stack's calls, and the errors it meets, against resources called ``name``."""
    s3, ddb, sqs = _client("s3", url), _client("dynamodb", url), _client("sqs", url)
    events, cloudwatch, sns = _client("events", url), _client("cloudwatch", url), _client("sns", url)
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="a b+c.png", Body=b"\x89PNG\r\n", Metadata={"under_score": "1"})
    s3.head_object(Bucket=name, Key="a b+c.png")
    s3.get_object(Bucket=name, Key="a b+c.png", Range="bytes=0-3")["Body"].read()
    s3.put_object(Bucket=name, Key="once.json", Body=b"{}", IfNoneMatch="*")
    with pytest.raises(s3.exceptions.ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket=name, Key="once.json", Body=b"{}", IfNoneMatch="*")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=name, Key="absent")
    with pytest.raises(s3.exceptions.ClientError, match="404"):
        s3.head_object(Bucket=name, Key="absent")
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.list_objects_v2(Bucket=f"{name}-absent")
    s3.list_objects_v2(Bucket=name, Prefix="a")
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    item = {"id": {"S": "k"}, "status": {"S": "INPROGRESS"}}
    ddb.put_item(TableName=name, Item=item, ConditionExpression="attribute_not_exists(id)")
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(TableName=name, Item=item, ConditionExpression="attribute_not_exists(id)")
    ddb.update_item(
        TableName=name,
        Key={"id": {"S": "k"}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "COMPLETED"}},
    )
    ddb.get_item(TableName=name, Key={"id": {"S": "k"}})
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="hello")
    sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName=f"{name}-absent")
    events.put_events(Entries=[{"Source": "bayroute", "DetailType": name, "Detail": "{}"}])
    cloudwatch.put_metric_data(Namespace=name, MetricData=[{"MetricName": "m", "Value": 1.0}])
    with pytest.raises(sns.exceptions.NotFoundException):
        sns.publish(TopicArn=f"arn:aws:sns:{REGION}:123456789012:{name}-absent", Message="m")


@pytest.fixture
def side_by_side() -> Iterator[tuple[_Recorded, _Recorded]]:
    """moto's Flask application and the stack's, each in process on its own URL."""
    with_flask = _Recorded(DomainDispatcherApplication(create_backend_app))
    flaskless = _Recorded(fastpath.moto_application())
    fastpath.serve_in_process(FLASK_URL, with_flask)
    fastpath.serve_in_process(FLASKLESS_URL, flaskless)
    yield with_flask, flaskless
    for url in (FLASK_URL, FLASKLESS_URL):
        fastpath.stop_serving_in_process(url)


def test_the_stacks_calls_and_their_errors_get_the_answers_moto_gives_with_flask(
    side_by_side: tuple[_Recorded, _Recorded],
) -> None:
    with_flask, flaskless = side_by_side
    _scenario(FLASK_URL, "with-flask")
    _scenario(FLASKLESS_URL, "sans-flask")
    assert len(flaskless.answers) == len(with_flask.answers) > 20
    assert {status for status, _, _ in flaskless.answers} >= {200, 400, 404, 412}
    for expected, got in zip(with_flask.answers, flaskless.answers, strict=True):
        assert _normalised(got, FLASKLESS_URL, "sans-flask") == _normalised(expected, FLASK_URL, "with-flask")


def test_api_requests_skip_flask_and_the_rest_still_reach_it(monkeypatch: pytest.MonkeyPatch) -> None:
    app = fastpath.moto_application()
    client = Client(app)
    flask_views: list[str] = []
    original = convert_to_flask_response.__call__

    def counted(self: convert_to_flask_response, *args: Any, **kwargs: Any) -> Any:
        flask_views.append(self.__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(convert_to_flask_response, "__call__", counted)
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=ak/20260101/us-east-1/sqs/aws4_request, Signature=x"}
    listed = client.post(
        "/", data="Action=ListQueues", headers=signed, content_type="application/x-www-form-urlencoded"
    )
    assert listed.status_code == 200 and b"ListQueuesResult" in listed.data
    assert listed.headers["Access-Control-Allow-Origin"] == "*"
    assert flask_views == []  # answered without Flask
    from_a_browser = client.post(
        "/",
        data="Action=ListQueues",
        headers={**signed, "Origin": "http://example.test"},
        content_type="application/x-www-form-urlencoded",
    )
    assert from_a_browser.status_code == 200
    assert len(flask_views) == 1  # through moto's Flask view
    # Flask-CORS names the origin back, which only it does here
    assert from_a_browser.headers["Access-Control-Allow-Origin"] == "http://example.test"
    preflight = client.options("/", headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://example.test"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    reset = client.post("/moto-api/reset")
    assert reset.status_code == 200  # the admin API keeps its Flask application
