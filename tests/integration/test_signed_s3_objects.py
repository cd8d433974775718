"""The functions' object calls through the signed S3 client answer as through botocore's: the same
``ObjectStore`` results and errors, and the same answer keys, against moto's S3 over HTTP and in process; a GET's
body streams from its connection, which is kept only when the body was read to its end."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from bayroute.adapters import signed_s3
from bayroute.adapters.aws import ObjectStore
from bayroute.adapters.signed_s3 import Credentials, SignedS3Client
from bayroute.errors import EmptyObject, ObjectMissing, TooLarge
from bayroute.local import fastpath
from tests.integration.test_signed_s3_http import RawServer

BUCKET = "signed-objects-test"
VERSIONED = "signed-objects-versioned"
ANSWER_KEYS = ("ContentLength", "ETag", "VersionId", "ContentType", "ContentRange")


def _free_port_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        return f"http://127.0.0.1:{unused.getsockname()[1]}"


@pytest.fixture(params=["http", "in_process"])
def endpoint(request: pytest.FixtureRequest, moto_url: str) -> Iterator[str]:
    """moto's S3 over the network, or answered in this process as the local stack answers its functions."""
    if request.param == "http":
        yield moto_url
        return
    url = _free_port_url()
    fastpath.serve_in_process(url, fastpath.moto_application())
    try:
        yield url
    finally:
        fastpath.stop_serving_in_process(url)


@pytest.fixture
def clients(endpoint: str) -> tuple[Any, SignedS3Client]:
    botocore_client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local"
    )
    for bucket in (BUCKET, VERSIONED):
        botocore_client.create_bucket(Bucket=bucket)
    botocore_client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    return botocore_client, SignedS3Client(Credentials("local", "local"), "us-east-1", endpoint)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call gave, comparable across clients: its value, or its error's type and text."""
    try:
        return "value", call()
    except (ObjectMissing, TooLarge, EmptyObject) as error:
        return "error", (type(error).__name__, str(error))
    except ClientError as error:
        return "error", ("ClientError", error.response["Error"], error.operation_name)


def test_the_object_store_reads_and_writes_alike_through_either_client(clients: tuple[Any, SignedS3Client]) -> None:
    botocore_client, signed = clients
    botocore_client.put_object(Bucket=BUCKET, Key="in box/é+1.png", Body=b"\x89PNG" + bytes(range(256)) * 4)
    botocore_client.put_object(Bucket=BUCKET, Key="empty", Body=b"")
    first = botocore_client.put_object(Bucket=VERSIONED, Key="v", Body=b"first version")["VersionId"]
    second = botocore_client.put_object(Bucket=VERSIONED, Key="v", Body=b"second, longer version")
    stale_etag = botocore_client.head_object(Bucket=VERSIONED, Key="v", VersionId=first)["ETag"].strip('"')

    def calls(store: ObjectStore, tag: str) -> list[Callable[[], Any]]:
        return [
            lambda: store.read(BUCKET, "in box/é+1.png", max_bytes=10_000),
            lambda: store.read(BUCKET, "in box/é+1.png", max_bytes=1_027),
            lambda: store.read(BUCKET, "in box/é+1.png", max_bytes=1_028),
            lambda: store.read(BUCKET, "no such key", max_bytes=100),
            lambda: store.read(VERSIONED, "v", max_bytes=100, version_id=first),
            lambda: store.read(VERSIONED, "v", max_bytes=100, etag=second["ETag"].strip('"')),
            lambda: store.read(VERSIONED, "v", max_bytes=100, etag=stale_etag),
            lambda: store.read_prefix(BUCKET, "in box/é+1.png", length=8),
            lambda: store.read_prefix(VERSIONED, "v", length=4096, version_id=first),
            lambda: store.read_prefix(BUCKET, "empty", length=8),
            lambda: store.head(BUCKET, "in box/é+1.png"),
            lambda: store.head(VERSIONED, "v", version_id=first),
            lambda: store.head(BUCKET, "no such key"),
            lambda: store.create_json(BUCKET, f"results/{tag}.json", {"n": 1}),
            lambda: store.create_json(BUCKET, f"results/{tag}.json", {"n": 2}),
            lambda: store.get_json(BUCKET, f"results/{tag}.json"),
            lambda: store.put_json(BUCKET, f"results/{tag}.json", {"n": 3}),
            lambda: store.get_json(BUCKET, f"results/{tag}.json"),
            lambda: store.get_json(BUCKET, "results/none.json"),
        ]

    run = uuid.uuid4().hex  # moto's buckets outlive the test: each run writes its own results
    theirs = [outcome(call) for call in calls(ObjectStore(botocore_client), f"botocore-{run}")]
    ours = [outcome(call) for call in calls(ObjectStore(signed), f"signed-{run}")]
    assert ours == theirs
    # The cases do what they are named for, so that agreeing means something.
    assert [kind for kind, _ in theirs].count("error") == 5
    assert theirs[4] == ("value", b"first version")
    assert theirs[13:16] == [("value", True), ("value", False), ("value", {"n": 1})]


@pytest.mark.parametrize(
    "arguments",
    [{}, {"Range": "bytes=2-9"}, {"Range": "bytes=0-0"}],
)
def test_get_and_head_answer_the_keys_botocore_answers(
    clients: tuple[Any, SignedS3Client], arguments: dict[str, str]
) -> None:
    botocore_client, signed = clients
    version = botocore_client.put_object(Bucket=VERSIONED, Key="k", Body=b"0123456789abcdef", ContentType="image/png")
    for extra in ({}, {"VersionId": version["VersionId"]}, {"IfMatch": version["ETag"]}):
        theirs = botocore_client.get_object(Bucket=VERSIONED, Key="k", **arguments, **extra)
        ours = signed.get_object(Bucket=VERSIONED, Key="k", **arguments, **extra)
        assert {key: ours.get(key) for key in ANSWER_KEYS} == {key: theirs.get(key) for key in ANSWER_KEYS}
        with ours["Body"] as body:
            assert body.read() == theirs["Body"].read()
    head_keys = ("ContentLength", "ETag", "VersionId", "ContentType")
    theirs = botocore_client.head_object(Bucket=VERSIONED, Key="k")
    ours = signed.head_object(Bucket=VERSIONED, Key="k")
    assert {key: ours.get(key) for key in head_keys} == {key: theirs.get(key) for key in head_keys}


def test_a_missing_objects_head_is_botocores_404(clients: tuple[Any, SignedS3Client]) -> None:
    botocore_client, signed = clients
    with pytest.raises(ClientError) as theirs:
        botocore_client.head_object(Bucket=BUCKET, Key="gone")
    with pytest.raises(ClientError) as ours:
        signed.head_object(Bucket=BUCKET, Key="gone")
    assert ours.value.response["Error"] == theirs.value.response["Error"] == {"Code": "404", "Message": "Not Found"}
    assert ours.value.operation_name == theirs.value.operation_name == "HeadObject"


BODY = bytes(range(256)) * 64  # 16 KiB: more than the reader below takes


def answer_a_body(connection: socket.socket) -> bool:
    connection.sendall(b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Length: %d\r\n\r\n' % len(BODY) + BODY)
    return True


@pytest.mark.parametrize(
    ("read", "connections"),
    [
        (lambda body: body.read(), 1),  # drained: the next GET reuses the connection
        (lambda body: body.read(len(BODY) + 1), 1),  # a limit past the end drains it too
        (lambda body: body.read(100), 3),  # stopped short: the rest is never read, the connection is closed
    ],
)
def test_a_gets_body_streams_and_its_connection_is_kept_only_when_drained(
    monkeypatch: pytest.MonkeyPatch, read: Callable[[Any], bytes], connections: int
) -> None:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [])
    server = RawServer(answer_a_body)
    try:
        client = SignedS3Client(Credentials("a", "b"), "us-east-1", server.url)
        for _ in range(3):
            answer = client.get_object(Bucket="b", Key="k")
            assert answer["ContentLength"] == len(BODY)
            with answer["Body"] as body:
                data = read(body)
            assert BODY.startswith(data) and data
        assert (server.connections, server.requests) == (connections, 3)
    finally:
        server.close()
