"""The functions' signed S3 client (``bayroute.adapters.signed_s3``): its signatures are botocore's, and it chooses,
addresses, fails and retries as botocore's client would. No network: a fake sender answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.exceptions import ClientError, EndpointConnectionError

from bayroute.adapters import signed_s3
from bayroute.adapters.signed_s3 import Credentials, Reply, SignedRequest, SignedS3Client, sign

WHEN = datetime(2026, 11, 29, 9, 41, 7, tzinfo=UTC)
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("region", "endpoint", "bucket", "key", "token", "body"),
    [
        (
            "us-east-1",
            None,
            "bayroute-capture",
            "capture/ep/AllTraffic/2026/11/29/09/41-07-000-id.jsonl",
            None,
            b"{}\n",
        ),
        ("eu-west-1", None, "bayroute-capture", "a b+c é~x/(1).jsonl", "FwoG/token+=", b'{"x": 1}\n'),
        ("eu-west-1", None, "my.dotted.bucket", "k", None, b""),
        ("cn-north-1", None, "bayroute-capture", "k", "t", b"x" * 70_000),
        ("us-east-1", "http://127.0.0.1:5000", "bayroute-capture", "deep/key with spaces.jsonl", None, b"\x00\xff"),
    ],
)
def test_the_signature_is_the_one_botocore_computes_for_the_same_request(
    region: str, endpoint: str | None, bucket: str, key: str, token: str | None, body: bytes
) -> None:
    credentials = Credentials("AKIDEXAMPLE", SECRET, token)
    url = SignedS3Client(credentials, region, endpoint).object_url(bucket, key)
    ours = sign("PUT", url, {"Content-Type": "application/jsonlines"}, body, credentials, region, WHEN)

    theirs = AWSRequest("PUT", url, data=body, headers={"Content-Type": "application/jsonlines"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN.replace(tzinfo=None)):
        S3SigV4Auth(BotocoreCredentials("AKIDEXAMPLE", SECRET, token), "s3", region).add_auth(theirs)

    assert ours["authorization"] == theirs.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == theirs.headers["X-Amz-Content-SHA256"]
    assert ours["x-amz-date"] == theirs.headers["X-Amz-Date"] == "20261129T094107Z"
    assert ours.get("x-amz-security-token") == token
    assert ours["host"] == url.split("/")[2]


@pytest.mark.parametrize(
    ("method", "version_id", "headers"),
    [
        ("GET", None, {"If-Match": '"0123abcd"'}),
        ("GET", "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo", {"Range": "bytes=0-15"}),
        ("GET", "null", {"If-Match": '"e"', "Range": "bytes=0-0"}),
        ("HEAD", "v~1 é", {}),
        ("PUT", None, {"Content-Type": "application/json", "If-None-Match": "*"}),
    ],
)
def test_reads_and_conditional_writes_are_signed_as_botocore_signs_them(
    method: str, version_id: str | None, headers: dict[str, str]
) -> None:
    credentials = Credentials("AKIDEXAMPLE", SECRET, "FwoG/token+=")
    url = SignedS3Client(credentials, "eu-west-1").object_url("bayroute-inbox", "in box/é.png", version_id)
    body = b"{}" if method == "PUT" else b""
    ours = sign(method, url, headers, body, credentials, "eu-west-1", WHEN)

    theirs = AWSRequest(method, url, data=body, headers=headers)
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN.replace(tzinfo=None)):
        S3SigV4Auth(BotocoreCredentials("AKIDEXAMPLE", SECRET, "FwoG/token+="), "s3", "eu-west-1").add_auth(theirs)

    assert ours["authorization"] == theirs.headers["Authorization"]
    assert ("?versionId=" in url) == (version_id is not None)


def test_any_part_of_the_request_changes_the_signature() -> None:
    credentials = Credentials("AKIDEXAMPLE", SECRET)
    url = "https://b.s3.us-east-1.amazonaws.com/k"

    def signature(**changes: object) -> str:
        args: dict[str, object] = {
            "method": "PUT",
            "url": url,
            "headers": {"Content-Type": "text/plain"},
            "body": b"body",
            "credentials": credentials,
            "region": "us-east-1",
            "when": WHEN,
        }
        return sign(**{**args, **changes})["authorization"]  # type: ignore[arg-type]

    variants = [
        signature(),
        signature(method="POST"),
        signature(url=url + "2"),
        signature(headers={"Content-Type": "text/html"}),
        signature(body=b"bodY"),
        signature(credentials=Credentials("AKIDEXAMPLE", SECRET + "x")),
        signature(credentials=Credentials("AKIDEXAMPLE", SECRET, "token")),
        signature(region="eu-west-1"),
        signature(when=WHEN + timedelta(seconds=1)),
    ]
    assert len(set(variants)) == len(variants)


@pytest.mark.parametrize(
    ("region", "endpoint", "bucket", "expected"),
    [
        (
            "us-east-1",
            "http://127.0.0.1:5000/",
            "bayroute-capture",
            "http://127.0.0.1:5000/bayroute-capture/a%20b/%C3%A9~.jsonl",
        ),
        (
            "eu-west-1",
            None,
            "bayroute-capture",
            "https://bayroute-capture.s3.eu-west-1.amazonaws.com/a%20b/%C3%A9~.jsonl",
        ),
        (
            "eu-west-1",
            None,
            "my.dotted.bucket",
            "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/a%20b/%C3%A9~.jsonl",
        ),
        ("eu-west-1", None, "Upper-Case", "https://s3.eu-west-1.amazonaws.com/Upper-Case/a%20b/%C3%A9~.jsonl"),
        (
            "cn-north-1",
            None,
            "bayroute-capture",
            "https://bayroute-capture.s3.cn-north-1.amazonaws.com.cn/a%20b/%C3%A9~.jsonl",
        ),
    ],
)
def test_objects_are_addressed_as_botocore_addresses_them(
    region: str, endpoint: str | None, bucket: str, expected: str
) -> None:
    client = SignedS3Client(Credentials("a", "b"), region, endpoint)
    assert client.object_url(bucket, "a b/é~.jsonl") == expected


LAMBDA_ENV = {"AWS_ACCESS_KEY_ID": "ASIA", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token"}


def test_a_lambda_functions_environment_gets_the_signed_client_with_standard_retries() -> None:
    client = signed_s3_client({**LAMBDA_ENV, "AWS_REGION": "eu-west-1"})
    assert client.attempts == signed_s3.STANDARD_ATTEMPTS == 3
    assert client.object_url("bayroute-capture", "k") == "https://bayroute-capture.s3.eu-west-1.amazonaws.com/k"


def test_an_endpoint_override_gets_path_style_and_one_attempt_as_aws_client_configures_botocore() -> None:
    client = signed_s3_client({**LAMBDA_ENV, "AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_DEFAULT_REGION": "x-1"})
    assert client.attempts == 1
    assert client.object_url("b", "k") == "http://127.0.0.1:5000/b/k"


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"AWS_PROFILE": "dev"},
        {"AWS_ACCESS_KEY_ID": "only-the-id"},
        {**LAMBDA_ENV, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5000"},
        {**LAMBDA_ENV, "AWS_USE_FIPS_ENDPOINT": "true"},
        {**LAMBDA_ENV, "AWS_USE_DUALSTACK_ENDPOINT": "true"},
        {**LAMBDA_ENV, "AWS_REGION": "us-iso-east-1"},
    ],
)
def test_botocore_decides_wherever_it_would_not_take_credentials_and_endpoint_from_the_environment(
    environ: dict[str, str],
) -> None:
    assert signed_s3.signed_s3_from_environment(environ) is None


def signed_s3_client(environ: dict[str, str]) -> SignedS3Client:
    client = signed_s3.signed_s3_from_environment(environ)
    assert client is not None
    return client


class FakeS3:
    """Answers the signed client's requests in turn from ``replies``, and keeps what it was sent."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[SignedRequest] = []

    def __call__(self, request: SignedRequest) -> Reply:
        self.requests.append(request)
        return self.replies.pop(0)


def error_reply(status: int, code: str, message: str = "it went wrong") -> Reply:
    body = f'<?xml version="1.0"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
    return Reply(status, {"x-amz-request-id": "req-1"}, body)


OK = Reply(200, {"etag": '"abc"', "x-amz-version-id": "v1", "x-amz-request-id": "req-2"}, b"")


@pytest.fixture
def sleeps() -> list[float]:
    return []


def client_with(
    monkeypatch: pytest.MonkeyPatch, fake: FakeS3, sleeps: list[float], endpoint: str | None = None
) -> SignedS3Client:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [fake])
    times: Iterator[datetime] = (WHEN + timedelta(seconds=n) for n in range(100))
    return SignedS3Client(Credentials("a", "b"), "us-east-1", endpoint, clock=lambda: next(times), sleep=sleeps.append)


def put(client: SignedS3Client) -> dict[str, object]:
    return client.put_object(
        Bucket="bayroute-capture", Key="k.jsonl", Body=b"{}\n", ContentType="application/jsonlines"
    )


def test_a_stored_object_answers_its_etag_and_version(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    fake = FakeS3(OK)
    answer = put(client_with(monkeypatch, fake, sleeps))
    assert (answer["ETag"], answer["VersionId"]) == ('"abc"', "v1")
    [request] = fake.requests
    assert (request.method, request.body) == ("PUT", b"{}\n")
    assert request.headers["content-type"] == "application/jsonlines"
    assert sleeps == []


def test_throttling_and_server_errors_are_retried_each_attempt_signed_anew(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    fake = FakeS3(error_reply(503, "SlowDown"), error_reply(400, "RequestTimeout"), OK)
    assert put(client_with(monkeypatch, fake, sleeps))["ETag"] == '"abc"'
    dates = [request.headers["x-amz-date"] for request in fake.requests]
    assert dates == ["20261129T094107Z", "20261129T094108Z", "20261129T094109Z"]
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1 and 0 <= sleeps[1] <= 2


def test_the_last_attempts_error_is_botocores_client_error_with_s3s_code(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    fake = FakeS3(*[error_reply(500, "InternalError", "We encountered an internal error")] * 3)
    with pytest.raises(ClientError) as raised:
        put(client_with(monkeypatch, fake, sleeps))
    error = raised.value
    assert error.operation_name == "PutObject"
    assert error.response["Error"] == {"Code": "InternalError", "Message": "We encountered an internal error"}
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert error.response["ResponseMetadata"]["RequestId"] == "req-1"
    assert len(fake.requests) == 3 and len(sleeps) == 2


def test_a_refusal_is_not_retried(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    fake = FakeS3(error_reply(403, "AccessDenied", "Access Denied"), OK)
    with pytest.raises(ClientError, match="AccessDenied"):
        put(client_with(monkeypatch, fake, sleeps))
    assert len(fake.requests) == 1 and sleeps == []


def test_an_error_without_a_body_is_named_by_its_status(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> None:
    fake = FakeS3(Reply(404, {}, b""))
    with pytest.raises(ClientError) as raised:
        put(client_with(monkeypatch, fake, sleeps))
    assert raised.value.response["Error"]["Code"] == "404"


def test_against_an_endpoint_override_a_server_error_is_final(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    fake = FakeS3(error_reply(500, "InternalError"), OK)
    with pytest.raises(ClientError, match="InternalError"):
        put(client_with(monkeypatch, fake, sleeps, endpoint="http://127.0.0.1:5000"))
    assert len(fake.requests) == 1


def test_connection_errors_are_retried_then_raised_as_botocores(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    client = client_with(monkeypatch, FakeS3(), sleeps)
    attempts: list[SignedRequest] = []

    def unreachable(request: SignedRequest, *, stream: bool = False) -> Reply:
        attempts.append(request)
        raise EndpointConnectionError(endpoint_url=request.url)

    monkeypatch.setattr(client, "_send", unreachable)
    with pytest.raises(EndpointConnectionError):
        put(client)
    assert len(attempts) == 3 and len(sleeps) == 2


def test_a_sender_that_declines_leaves_the_request_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeS3(OK)
    declined: list[str] = []

    def decline(request: SignedRequest) -> None:
        declined.append(request.url)

    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [decline, fake])
    put(SignedS3Client(Credentials("a", "b"), "us-east-1"))
    assert declined == [fake.requests[0].url] == ["https://bayroute-capture.s3.us-east-1.amazonaws.com/k.jsonl"]
