"""The relay between the local stack's two processes: requests arrive whole, answers come back whole, and each
request reaches the process that owns its service."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from bayroute.config import load_settings
from bayroute.local import aws_process
from bayroute.local.aws_process import READY_PREFIX
from bayroute.local.fastpath import call_app
from bayroute.local.relay import (
    MAX_FRAME_BYTES,
    RelayClient,
    RelayError,
    RelayServer,
    RoutingApp,
    _receive_frame,
    is_workflow_request,
)
from bayroute.local.stack import AwsProcessFailed, LocalStack, StackPortUnavailable

SETTINGS = load_settings(env={})


class EchoApp:
    """Answers with what it was asked: method, path, query, chosen headers and the body; counts its calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        seen = {
            "app": self.name,
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
            "target": environ.get("HTTP_X_AMZ_TARGET"),
            "meta": environ.get("HTTP_X_AMZ_META_NOTE"),
            "body": body.decode("latin-1"),
        }
        self.calls.append(seen)
        status = "404 Not Found" if environ["PATH_INFO"] == "/missing" else "200 OK"
        start_response(status, [("Content-Type", "application/json"), ("X-Echo", self.name)])
        return [json.dumps(seen).encode()]


def _environ(method: str, path: str, body: bytes = b"", **headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "5000",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "werkzeug.socket": object(),  # the server's own objects never cross
    }
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return environ


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[tuple[EchoApp, RelayServer]]:
    app = EchoApp("aws")
    server = RelayServer(str(tmp_path / "aws.sock"), app).start()
    yield app, server
    server.stop()


def test_a_relayed_request_is_answered_as_the_app_answers_it_in_process(
    echo_server: tuple[EchoApp, RelayServer],
) -> None:
    _, server = echo_server
    body = bytes(range(256)) * 300  # binary, larger than one socket read
    relayed = RelayClient(server.path).call(
        {**_environ("PUT", "/inbox/a%20b.png", body, X_AMZ_META_NOTE="x"), "QUERY_STRING": "versionId=3"}
    )
    direct = call_app(
        EchoApp("aws"),
        {**_environ("PUT", "/inbox/a%20b.png", body, X_AMZ_META_NOTE="x"), "QUERY_STRING": "versionId=3"},
    )
    assert relayed == direct
    status, headers, answer = relayed
    assert status == 200 and ("X-Echo", "aws") in headers
    seen = json.loads(answer)
    assert seen["body"].encode("latin-1") == body and seen["query"] == "versionId=3" and seen["meta"] == "x"


def test_an_error_status_comes_back_unchanged(echo_server: tuple[EchoApp, RelayServer]) -> None:
    _, server = echo_server
    status, _, _ = RelayClient(server.path).call(_environ("GET", "/missing"))
    assert status == 404


def test_each_calling_thread_keeps_its_own_connection(echo_server: tuple[EchoApp, RelayServer]) -> None:
    app, server = echo_server
    client = RelayClient(server.path)
    answers: list[int] = []

    def call_twice() -> None:
        for _ in range(2):
            answers.append(client.call(_environ("GET", "/ok"))[0])

    threads = [threading.Thread(target=call_twice) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert answers == [200] * 8 and len(app.calls) == 8


def test_an_unreachable_process_is_a_connection_error(tmp_path: Path) -> None:
    with pytest.raises(RelayError, match="cannot reach the other process"):
        RelayClient(str(tmp_path / "nobody.sock")).call(_environ("GET", "/"))
    assert issubclass(RelayError, ConnectionError)


@contextmanager
def _peer_answering_once(path: str, reply: bytes) -> Iterator[None]:
    """A raw peer at ``path`` that takes one connection, reads the request, writes ``reply`` and closes; the
    socket path is free again on exit."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def answer_once() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(reply)
        connection.close()

    thread = threading.Thread(target=answer_once)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=10)
        listener.close()
        os.unlink(path)


def test_a_peer_that_closes_mid_request_is_a_connection_error_and_the_next_call_reconnects(tmp_path: Path) -> None:
    path = str(tmp_path / "closing.sock")
    client = RelayClient(path)
    with _peer_answering_once(path, b""), pytest.raises(RelayError, match="closed the connection"):
        client.call(_environ("POST", "/", b"payload"))
    app = EchoApp("again")
    server = RelayServer(path, app).start()
    try:
        assert client.call(_environ("GET", "/ok"))[0] == 200  # a new connection, not the closed one
    finally:
        server.stop()


def _frame_read_while_sent_in(pieces: list[bytes]) -> bytes:
    """What ``_receive_frame`` reads while a peer writes ``pieces`` apart in time (then closes)."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def write() -> None:
        for piece in pieces:
            writer.sendall(piece)
            time.sleep(0.05)  # each piece reaches the reader on its own
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        return _receive_frame(reader)
    finally:
        thread.join(timeout=10)
        reader.close()


@pytest.mark.parametrize(
    "cuts",
    [(), (2,), (4,), (6,), (2, 6, 100)],
    ids=["whole", "prefix-split", "body-apart", "body-split", "everything-split"],
)
def test_a_frame_is_read_whole_however_it_arrives(cuts: tuple[int, ...]) -> None:
    body = bytes(range(256)) * 1200  # past the first read's buffer
    frame = len(body).to_bytes(4, "big") + body
    edges = [0, *cuts, len(frame)]
    assert _frame_read_while_sent_in([frame[a:b] for a, b in itertools.pairwise(edges)]) == body


def test_a_peer_that_closes_inside_a_frame_or_sends_past_it_is_an_error() -> None:
    with pytest.raises(RelayError, match="closed the connection"):
        _frame_read_while_sent_in([b"\x00\x00"])
    with pytest.raises(RelayError, match="closed the connection"):
        _frame_read_while_sent_in([(10).to_bytes(4, "big") + b"12345"])
    with pytest.raises(RelayError, match="closed the connection"):
        _frame_read_while_sent_in([])
    with pytest.raises(RelayError, match="2 bytes past a frame"):
        _frame_read_while_sent_in([(3).to_bytes(4, "big") + b"abcde"])


def test_a_frame_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "huge.sock")
    with (
        _peer_answering_once(path, (MAX_FRAME_BYTES + 1).to_bytes(4, "big")),
        pytest.raises(RelayError, match="over the"),
    ):
        RelayClient(path).call(_environ("GET", "/"))


@pytest.mark.parametrize(
    ("headers", "path", "workflow"),
    [
        ({"HTTP_X_AMZ_TARGET": "AWSStepFunctions.StartExecution"}, "/", True),
        ({}, "/2015-03-31/functions/bayroute-infer/invocations", True),
        ({"HTTP_X_AMZ_TARGET": "AmazonSQS.ReceiveMessage"}, "/", False),
        ({"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.PutItem"}, "/", False),
        ({"HTTP_X_AMZ_TARGET": "AWSEvents.PutEvents"}, "/", False),
        ({}, "/bayroute-inbox/photo.png", False),
        ({}, "/", False),
        (
            {"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AK/20261129/us-east-1/lambda/aws4_request, Sig=x"},
            "/2015-03-31/functions/bayroute-infer/invocations",
            True,
        ),
        (  # a bucket named like the Lambda API's version: the signature names S3
            {"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AK/20261129/us-east-1/s3/aws4_request, Sig=x"},
            "/2015-03-31/functions/key.png",
            False,
        ),
    ],
)
def test_requests_are_told_apart_by_the_service_they_address(
    headers: dict[str, str], path: str, workflow: bool
) -> None:
    assert is_workflow_request({"PATH_INFO": path, **headers}) is workflow


def test_the_routing_app_answers_its_own_services_relays_the_others_and_sends_admin_calls_to_both(
    echo_server: tuple[EchoApp, RelayServer],
) -> None:
    remote, server = echo_server
    local = EchoApp("workflow")
    app = RoutingApp(local, RelayClient(server.path), is_local=is_workflow_request)

    def served_by(environ: dict[str, Any]) -> str:
        status, headers, _ = call_app(app, environ)
        assert status == 200
        return dict(headers)["X-Echo"]

    assert served_by(_environ("POST", "/", b"{}", X_AMZ_TARGET="AWSStepFunctions.ListExecutions")) == "workflow"
    assert served_by(_environ("PUT", "/bucket/key", b"bytes")) == "aws"
    assert served_by(_environ("POST", "/moto-api/reset", b"{}")) == "workflow"
    assert [call["path"] for call in remote.calls] == ["/bucket/key", "/moto-api/reset"]
    assert [call["path"] for call in local.calls] == ["/", "/moto-api/reset"]
    assert local.calls[-1]["body"] == remote.calls[-1]["body"] == "{}"  # both read the whole body


def test_the_aws_process_serves_the_socket_it_is_handed_and_exits_when_its_standard_input_closes(
    tmp_path: Path,
) -> None:
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        child = subprocess.Popen(
            aws_process.command(listener.fileno(), relay_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(listener.fileno(),),
        )
        port = listener.getsockname()[1]
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().decode().strip() == f"{READY_PREFIX}{port}"
        assert (relay_dir / "aws.sock").exists()
        # moto answers on the handed-over port (an S3 ListBuckets), though this process no longer listens there.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            assert b"ListAllMyBucketsResult" in answer.read()
        child.stdin.close()  # as when the stack stops, or its process is killed
        assert child.wait(timeout=20) == 0
        assert not relay_dir.exists()  # a killed stack leaves no sockets behind
    finally:
        child.kill()
        child.wait()


def test_a_taken_port_is_a_clear_error_and_leaves_nothing_running() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        stack = LocalStack(SETTINGS, handlers={}, start_model_endpoint=False, aws_port=port)
        with pytest.raises(StackPortUnavailable, match=f"cannot listen on 127.0.0.1:{port}"):
            stack.start()
    assert stack._aws_child is None and stack._relay_dir is None
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False) as again:  # the process is free again
        assert again.resources is not None


def test_an_aws_process_that_dies_before_it_is_ready_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = LocalStack(SETTINGS, handlers={}, start_model_endpoint=False)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a child that exits at once, without a word
    with pytest.raises(AwsProcessFailed, match=r"exited \(1\) before taking requests"):
        stack.start()
    assert stack._aws_child is None and stack._relay_dir is None


def test_both_processes_answer_for_the_stack_whoever_asks() -> None:
    stack = LocalStack(SETTINGS, handlers={}, start_model_endpoint=False)
    with stack:
        assert stack.resources is not None
        # From this (the workflow) process, an S3 put is relayed to the AWS process ...
        stack.client("s3").put_object(Bucket=SETTINGS.names.inbox_bucket, Key="relayed.png", Body=b"bytes")
        # ... and another process reaches both services through the one public port, with no relay of its own.
        script = (
            "import boto3, json, sys\n"
            "s3 = boto3.client('s3'); sfn = boto3.client('stepfunctions')\n"
            f"body = s3.get_object(Bucket={SETTINGS.names.inbox_bucket!r}, Key='relayed.png')['Body'].read()\n"
            "machines = [m['name'] for m in sfn.list_state_machines()['stateMachines']]\n"
            "print(json.dumps({'body': body.decode(), 'machines': machines}))\n"
        )
        env = {**os.environ, "AWS_ENDPOINT_URL": stack.aws_endpoint_url}
        seen = json.loads(
            subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True).stdout
        )
        assert seen == {"body": "bytes", "machines": [SETTINGS.names.state_machine]}
        child, url = stack._aws_child, stack.aws_endpoint_url
        assert child is not None and child.poll() is None
    assert child.wait(timeout=10) == 0  # the AWS process stopped with the stack, and its port with it
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/", timeout=2)


def test_the_one_process_stack_still_runs_everything_in_process() -> None:
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False, aws_process=False) as stack:
        assert stack._aws_child is None
        stack.client("s3").put_object(Bucket=SETTINGS.names.inbox_bucket, Key="here.png", Body=b"x")
        assert boto3.client("s3").get_object(Bucket=SETTINGS.names.inbox_bucket, Key="here.png")["Body"].read() == b"x"


def test_the_aws_process_imports_the_same_bayroute_as_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    import bayroute
    from bayroute.local.stack import _same_package_environment

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    environment = _same_package_environment()
    first, rest = environment["PYTHONPATH"].split(os.pathsep, 1)
    assert rest == "/elsewhere"
    probe = [sys.executable, "-c", "import bayroute; print(bayroute.__file__)"]
    imported = subprocess.run(probe, env=environment, cwd="/", check=True, capture_output=True, text=True).stdout
    assert Path(imported.strip()).resolve() == Path(bayroute.__file__).resolve()
    assert Path(first) == Path(bayroute.__file__).resolve().parent.parent


def test_the_aws_process_patches_moto_services_without_loading_the_step_functions_interpreter() -> None:
    # The interpreter's modules take over a second to import; the process that runs none must not pay for them.
    script = (
        "import sys, json\n"
        "from bayroute.local import aws_process, fastpath\n"
        "fastpath.apply_to_services()\n"
        "interpreter = sorted(m for m in sys.modules if m.startswith('moto.stepfunctions.parser'))\n"
        "print(json.dumps([fastpath.services_patched(), fastpath.is_applied(), interpreter]))\n"
    )
    answer = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert json.loads(answer) == [True, False, []]


def test_an_aws_process_that_dies_under_a_running_stack_is_reported_and_the_stack_still_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="bayroute.local.stack")
    stack = LocalStack(SETTINGS, handlers={}, start_model_endpoint=False)
    with stack:
        child = stack._aws_child
        assert child is not None
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "exited with -9" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"AWS process (pid {child.pid}) exited with -9" in caplog.text
        with pytest.raises(botocore.exceptions.ClientError):  # every AWS call fails, and says so
            stack.client("s3").head_bucket(Bucket=SETTINGS.names.inbox_bucket)
    assert stack._aws_child is None and stack._relay_dir is None


def test_stopping_the_stack_is_not_reported_as_the_aws_process_dying(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="bayroute.local.stack")
    with LocalStack(SETTINGS, handlers={}, start_model_endpoint=False):
        pass
    time.sleep(0.5)  # the watcher sees the exit after stop() returns
    assert "AWS process" not in caplog.text
