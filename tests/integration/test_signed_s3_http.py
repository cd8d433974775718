"""The functions' signed S3 client over real HTTP: against moto's server, against servers that drop or stall
connections, and in a fresh process where infer answers its first request without botocore's client."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from bayroute.adapters import signed_s3
from bayroute.adapters.signed_s3 import Credentials, SignedS3Client
from bayroute.capture import parse_capture_line
from bayroute.config import REPO_ROOT, load_settings
from tests.fixtures_model import TINY_LABELS, build_tiny_model
from tests.integration.test_handlers_infer import infer_payload, png_of

BUCKET = "signed-put-test"
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [])  # the network, whatever ran before
    client = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    client.create_bucket(Bucket=BUCKET)
    return client


def test_an_object_put_over_http_reads_back_the_same(moto_url: str, s3: Any) -> None:
    client = SignedS3Client(Credentials("local", "local"), "us-east-1", moto_url)
    key = "capture/ep/AllTraffic/2026/11/29/09/a b+é~(1).jsonl"
    for body in (b'{"first": 1}\n', b'{"second": 2}\n'):  # the second goes over the kept-alive connection
        answer = client.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType="application/jsonlines")
        stored = s3.get_object(Bucket=BUCKET, Key=key)
        assert stored["Body"].read() == body
        assert stored["ContentType"] == "application/jsonlines"
        assert answer["ETag"] == stored["ETag"]
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_a_missing_bucket_is_s3s_error_code_as_botocore_reports_it(moto_url: str, s3: Any) -> None:
    client = SignedS3Client(Credentials("local", "local"), "us-east-1", moto_url)
    with pytest.raises(ClientError) as raised:
        client.put_object(Bucket="no-such-bucket", Key="k", Body=b"x", ContentType="text/plain")
    with pytest.raises(ClientError) as botocores:
        s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"x", ContentType="text/plain")
    assert raised.value.response["Error"]["Code"] == botocores.value.response["Error"]["Code"] == "NoSuchBucket"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_nothing_listening_is_an_endpoint_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [])
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    client = SignedS3Client(Credentials("a", "b"), "us-east-1", f"http://127.0.0.1:{port}")
    with pytest.raises(EndpointConnectionError):
        client.put_object(Bucket="b", Key="k", Body=b"x", ContentType="text/plain")


class RawServer:
    """A TCP server that reads each request and does what ``reply`` says with the connection: it answers True to
    read the next request on it, False to close it."""

    def __init__(self, reply: Callable[[socket.socket], bool]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.requests = 0
        self._reply = reply
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._accepted.append(connection)
            # A client that closes with an answer unread resets the connection: the next one is served all the same.
            with connection, contextlib.suppress(ConnectionResetError):
                while self._read_request(connection) and self._reply(connection):
                    pass

    def _read_request(self, connection: socket.socket) -> bool:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            head += chunk
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += connection.recv(65536)
        self.requests += 1
        return True

    def close(self) -> None:
        """Stop serving, and end the thread: a thread left running would make later tests' process pools spawn
        their workers instead of forking them."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone would not, on Linux)
        self.listener.close()
        for connection in self._accepted:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)  # wakes a recv() waiting on a kept-alive connection
        self._thread.join(timeout=15)
        assert not self._thread.is_alive()


OK = b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Length: 0\r\n\r\n'


def answer_and_keep_alive(connection: socket.socket) -> bool:
    connection.sendall(OK)
    return True


def answer_then_hang_up(connection: socket.socket) -> bool:
    """HTTP/1.1: the answer promises a kept-alive connection, which the server then drops (an idle timeout)."""
    connection.sendall(OK)
    return False


def test_puts_share_a_kept_alive_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [])
    server = RawServer(answer_and_keep_alive)
    try:
        client = SignedS3Client(Credentials("a", "b"), "us-east-1", server.url)
        for _ in range(3):
            client.put_object(Bucket="b", Key="k", Body=b"x", ContentType="text/plain")
        assert (server.connections, server.requests) == (1, 3)
    finally:
        server.close()


def test_a_kept_alive_connection_the_server_dropped_is_replaced_without_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [])
    server = RawServer(answer_then_hang_up)
    try:
        client = SignedS3Client(Credentials("a", "b"), "us-east-1", server.url)
        for _ in range(2):
            assert client.put_object(Bucket="b", Key="k", Body=b"x", ContentType="text/plain")["ETag"] == '"e"'
        assert server.connections == 2
    finally:
        server.close()


def test_a_new_connection_closed_before_the_answer_is_a_connection_closed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [])
    server = RawServer(lambda connection: False)  # reads the request, hangs up without a word
    try:
        client = SignedS3Client(Credentials("a", "b"), "us-east-1", server.url)
        with pytest.raises(ConnectionClosedError):
            client.put_object(Bucket="b", Key="k", Body=b"x", ContentType="text/plain")
        assert server.connections == 1  # one attempt against an endpoint override, and no silent resend
    finally:
        server.close()


def test_a_server_that_never_answers_is_a_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signed_s3, "IN_PROCESS_SENDERS", [])
    monkeypatch.setattr(signed_s3, "READ_TIMEOUT_S", 0.3)
    release = threading.Event()
    server = RawServer(lambda connection: not release.wait(10))
    try:
        client = SignedS3Client(Credentials("a", "b"), "us-east-1", server.url)
        with pytest.raises(ReadTimeoutError):
            client.put_object(Bucket="b", Key="k", Body=b"x", ContentType="text/plain")
    finally:
        release.set()
        server.close()


# Its own Lambda context, not test_handlers_support's LambdaContextStub: importing that module loads boto3 and
# moto, whose absence is what this script checks.
FIRST_ANSWER = """
import json, sys
from services.infer import handler

class Context:
    function_name = "bayroute-infer"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bayroute-infer"
    memory_limit_in_mb = 1024
    aws_request_id = "00000000-0000-0000-0000-000000000001"

prediction = handler.handler(json.loads(sys.stdin.read()), Context())
heavy = ["botocore.session", "botocore.client", "urllib3"]
print(json.dumps({"prediction": prediction, "loaded": {name: name in sys.modules for name in heavy}}))
"""


def test_infer_answers_its_first_request_and_captures_it_without_botocores_client(
    moto_url: str, s3: Any, tmp_path: Path
) -> None:
    settings = load_settings(env={})
    capture_bucket = settings.names.capture_bucket
    s3.create_bucket(Bucket=capture_bucket)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BAYROUTE_", "POWERTOOLS_"))},
        **MOTO_ENV,
        "AWS_ENDPOINT_URL": moto_url,
        "BAYROUTE_INFERENCE_BACKEND": "lambda",
        "BAYROUTE_MODEL_PATH": str(build_tiny_model(tmp_path / "model.onnx")),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONPATH": str(REPO_ROOT),
    }
    payload = infer_payload(png_of((230, 20, 20)), key="bays/first.png")
    done = subprocess.run(
        [sys.executable, "-c", FIRST_ANSWER],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == {"botocore.session": False, "botocore.client": False, "urllib3": False}
    prediction = report["prediction"]
    assert prediction["labels"] == list(TINY_LABELS) and prediction["top_class"] == "bicycle"

    listed = s3.list_objects_v2(Bucket=capture_bucket, Prefix=settings.prefixes.capture + "/")
    [key] = [item["Key"] for item in listed.get("Contents", [])]
    record = parse_capture_line(s3.get_object(Bucket=capture_bucket, Key=key)["Body"].read())
    assert record.event_id == prediction["inference_id"]
