"""Endpoint clients: HTTP against the real server and against misbehaving ones, SageMaker via Stubber, in-process."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.response import StreamingBody
from botocore.stub import Stubber
from PIL import Image

from bayroute.adapters.endpoint import (
    EndpointAnswer,
    HttpEndpoint,
    InProcessEndpoint,
    SageMakerEndpoint,
    endpoint_from_settings,
)
from bayroute.config import load_settings
from bayroute.endpoint_server import ModelServer
from bayroute.errors import EndpointThrottled, EndpointUnavailable, ModelError, WorkflowError
from bayroute.model.onnx_model import OnnxClassifier
from bayroute.serving import CUSTOM_ATTRIBUTES_HEADER, InferenceApp, format_custom_attributes
from tests.fixtures_model import model_fixture, tiny_model_fixture  # noqa: F401  (pytest fixtures)
from tests.hostile import encode, truncated_png

ATTRIBUTES = format_custom_attributes("fake-7", ["bicycle", "motorcycle"])


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> OnnxClassifier:
    return OnnxClassifier(model_path)


@pytest.fixture(scope="module")
def server(classifier: OnnxClassifier) -> Iterator[ModelServer]:
    with ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=6 * 1024 * 1024) as running:
        yield running


@pytest.fixture(scope="module")
def real_pngs(shared_dataset: Path) -> list[bytes]:
    return [
        path.read_bytes()
        for label in ("bicycle", "motorcycle")
        for path in sorted((shared_dataset / "train" / label).glob("*.png"))[:4]
    ]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_http_endpoint_against_the_server(
    server: ModelServer, classifier: OnnxClassifier, real_pngs: list[bytes]
) -> None:
    endpoint = HttpEndpoint(server.url, timeout=5)
    for png in real_pngs:
        answer = endpoint.invoke(png, "image/png")
        expected = classifier.predict(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))[0]
        assert np.allclose(answer.probabilities, expected, atol=1e-6)
        assert answer.labels == classifier.labels
        assert answer.model_version == classifier.model_version
        assert answer.content_type == "application/json"
        assert json.loads(answer.raw_body) == answer.probabilities
        assert answer.latency_ms > 0


def test_http_endpoint_is_safe_across_threads(server: ModelServer, real_pngs: list[bytes]) -> None:
    endpoint = HttpEndpoint(server.url, timeout=5)
    expected = {png: endpoint.invoke(png, "image/png").probabilities for png in real_pngs}
    failures: list[str] = []

    def work(offset: int) -> None:
        for index in range(20):
            png = real_pngs[(offset + index) % len(real_pngs)]
            if endpoint.invoke(png, "image/png").probabilities != expected[png]:
                failures.append(f"thread {offset} request {index}")

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_rejected_image_is_a_model_error_naming_the_servers_reason(server: ModelServer) -> None:
    with pytest.raises(ModelError) as caught:
        HttpEndpoint(server.url).invoke(truncated_png(), "image/png")
    assert caught.value.facts["status"] == 400
    assert caught.value.facts["endpoint_reason"] == "truncated_image"


def test_endpoint_down_is_unavailable() -> None:
    with pytest.raises(EndpointUnavailable, match="cannot reach") as caught:
        HttpEndpoint(f"http://127.0.0.1:{_closed_port()}", timeout=2).invoke(b"x", "image/png")
    assert caught.value.transient


def test_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        HttpEndpoint("ftp://example/model")


@dataclass
class Behaviour:
    """What the fake endpoint answers; mutable so one server serves every scenario."""

    status: int = 200
    body: bytes = b"[0.25, 0.75]"
    headers: dict[str, str] = field(default_factory=lambda: {CUSTOM_ATTRIBUTES_HEADER: ATTRIBUTES})
    delay_s: float = 0.0
    close_silently: bool = False  # close the connection after answering, without "Connection: close"
    connections: int = 0
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _FakeServer

    def setup(self) -> None:
        super().setup()
        self.server.behaviour.connections += 1

    def do_POST(self) -> None:
        behaviour = self.server.behaviour
        body = self.rfile.read(int(self.headers["Content-Length"]))
        behaviour.requests.append((self.path, self.headers.get("Content-Type", ""), body))
        time.sleep(behaviour.delay_s)
        self.send_response(behaviour.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(behaviour.body)))
        for name, value in behaviour.headers.items():
            self.send_header(name, value)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that timed out has hung up
            self.end_headers()
            self.wfile.write(behaviour.body)
        if behaviour.close_silently:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        return None


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour


@pytest.fixture()
def fake() -> Iterator[tuple[str, Behaviour]]:
    server = _FakeServer(("127.0.0.1", 0), _FakeHandler)
    server.behaviour = Behaviour()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/models/fake", server.behaviour
    server.shutdown()
    server.server_close()


def test_requests_follow_the_contract_and_reuse_one_connection(fake: tuple[str, Behaviour]) -> None:
    url, behaviour = fake
    endpoint = HttpEndpoint(url)
    answers = [endpoint.invoke(b"\x89PNG-bytes", "image/png") for _ in range(10)]
    assert answers[0].probabilities == [0.25, 0.75]
    assert answers[0].labels == ["bicycle", "motorcycle"]
    assert answers[0].model_version == "fake-7"
    assert behaviour.requests[0] == ("/models/fake/invocations", "image/png", b"\x89PNG-bytes")
    assert behaviour.connections == 1


def test_a_connection_closed_by_the_server_is_reopened(fake: tuple[str, Behaviour]) -> None:
    url, behaviour = fake
    behaviour.close_silently = True
    endpoint = HttpEndpoint(url)
    for _ in range(3):
        assert endpoint.invoke(b"png", "image/png").probabilities == [0.25, 0.75]
    assert behaviour.connections == 3


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (429, b'{"error": "throttled"}', EndpointThrottled),
        (503, b"Service Unavailable", EndpointUnavailable),
        (500, b'{"error": "model_error", "detail": "boom"}', EndpointUnavailable),
        (400, b'{"error": "not_an_image", "detail": "text"}', ModelError),
        (404, b"no such path", ModelError),
        (415, b'{"error": "unsupported_media_type"}', ModelError),
    ],
)
def test_error_statuses_map_to_named_errors(
    fake: tuple[str, Behaviour], status: int, body: bytes, error: type[WorkflowError]
) -> None:
    url, behaviour = fake
    behaviour.status, behaviour.body = status, body
    with pytest.raises(error) as caught:
        HttpEndpoint(url).invoke(b"png", "image/png")
    assert type(caught.value) is error
    assert caught.value.facts["status"] == status
    assert f"HTTP {status}" in caught.value.detail


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"<html>oops</html>", None, "not JSON"),
        (b'{"predictions": [0.5, 0.5]}', None, "no list of probabilities"),
        (b"[]", None, "no list of probabilities"),
        (b'["0.5", "0.5"]', None, "non-numeric"),
        (b"[true, false]", None, "non-numeric"),
        (b"[0.5, 0.6]", None, "summing to"),
        (b"[1.5, -0.5]", None, "outside [0, 1]"),
        (b"[NaN, 1.0]", None, "outside [0, 1]"),
        (b"[0.2, 0.3, 0.5]", None, "3 probabilities for 2 labels"),
        (b"[0.25, 0.75]", {}, "without a model version"),
    ],
)
def test_answers_that_break_the_contract_are_model_errors(
    fake: tuple[str, Behaviour], body: bytes, headers: dict[str, str] | None, message: str
) -> None:
    url, behaviour = fake
    behaviour.body = body
    if headers is not None:
        behaviour.headers = headers
    with pytest.raises(ModelError, match=re.escape(message)):
        HttpEndpoint(url).invoke(b"png", "image/png")


def test_the_verbose_answer_is_understood(fake: tuple[str, Behaviour]) -> None:
    url, behaviour = fake
    behaviour.headers = {}
    behaviour.body = json.dumps({"labels": ["a", "b"], "probabilities": [0.9, 0.1], "model_version": "v9"}).encode()
    answer = HttpEndpoint(url).invoke(b"png", "image/png")
    assert (answer.labels, answer.probabilities, answer.model_version) == (["a", "b"], [0.9, 0.1], "v9")


def test_a_slow_endpoint_times_out_as_unavailable(fake: tuple[str, Behaviour]) -> None:
    url, behaviour = fake
    behaviour.delay_s = 1.0
    started = time.monotonic()
    with pytest.raises(EndpointUnavailable, match=r"within 0\.2s"):
        HttpEndpoint(url, timeout=0.2).invoke(b"png", "image/png")
    assert time.monotonic() - started < 0.9


def test_in_process_endpoint_answers_like_the_server(
    server: ModelServer, classifier: OnnxClassifier, real_pngs: list[bytes]
) -> None:
    local = InProcessEndpoint(classifier)
    remote = HttpEndpoint(server.url)
    for png in real_pngs[:3]:
        mine, theirs = local.invoke(png, "image/png"), remote.invoke(png, "image/png")
        assert mine.probabilities == theirs.probabilities
        assert (mine.labels, mine.model_version, mine.content_type) == (
            theirs.labels,
            theirs.model_version,
            "application/json",
        )
    with pytest.raises(ModelError) as caught:
        local.invoke(b"hello", "image/png")
    assert caught.value.facts["endpoint_reason"] == "not_an_image"


@pytest.mark.parametrize("images", [1, 3], ids=["one image", "a batch of three"])
def test_in_process_a_model_that_answers_too_few_rows_is_a_model_error(
    classifier: OnnxClassifier, monkeypatch: pytest.MonkeyPatch, images: int
) -> None:
    """As the server answers it: a 500 model_error, not an IndexError, and never a batch missing a row."""
    local = InProcessEndpoint(classifier)
    real_predict = classifier.predict
    monkeypatch.setattr(classifier, "predict", lambda batch: real_predict(batch)[:-1])
    pixels = np.random.default_rng(images).integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, pixels if images > 1 else pixels[0], allow_pickle=False)
    answer = InferenceApp(classifier).invoke(buffer.getvalue(), "application/x-npy")
    assert answer.status == 500
    assert json.loads(answer.body) == {
        "error": "model_error",
        "detail": f"ValueError: the model answered {images - 1} rows for {images} images",
    }
    with pytest.raises(EndpointUnavailable) as caught:  # what any endpoint's 500 is: the workflow retries it
        local.invoke(encode(Image.new("RGB", (32, 32)), "PNG"), "image/png")
    assert caught.value.facts["endpoint_reason"] == "model_error"


def _sagemaker_client() -> object:
    return boto3.client(
        "sagemaker-runtime", region_name="eu-west-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


def test_sagemaker_endpoint_invokes_with_the_runtime_contract() -> None:
    client = _sagemaker_client()
    body = b"[0.125, 0.875]"
    with Stubber(client) as stub:
        stub.add_response(
            "invoke_endpoint",
            {
                "Body": StreamingBody(io.BytesIO(body), len(body)),
                "ContentType": "application/json",
                "CustomAttributes": ATTRIBUTES,
                "InvokedProductionVariant": "AllTraffic",
            },
            expected_params={
                "EndpointName": "bayroute-endpoint",
                "Body": b"png-bytes",
                "ContentType": "image/png",
                "Accept": "application/json",
                "InferenceId": "event-1",
            },
        )
        answer = SageMakerEndpoint("bayroute-endpoint", client).invoke(
            b"png-bytes", "image/png", inference_id="event-1"
        )
        stub.assert_no_pending_responses()
    assert answer == EndpointAnswer(
        probabilities=[0.125, 0.875],
        labels=["bicycle", "motorcycle"],
        model_version="fake-7",
        raw_body=body,
        content_type="application/json",
        latency_ms=answer.latency_ms,
    )


@pytest.mark.parametrize(
    ("code", "http_status", "fields", "error"),
    [
        ("ThrottlingException", 400, None, EndpointThrottled),
        ("ModelNotReadyException", 429, None, EndpointThrottled),
        ("ServiceUnavailable", 503, None, EndpointUnavailable),
        ("InternalFailure", 500, None, EndpointUnavailable),
        ("ValidationError", 400, None, ModelError),
        ("ModelError", 424, {"OriginalStatusCode": 400, "OriginalMessage": "bad image"}, ModelError),
        ("ModelError", 424, {"OriginalStatusCode": 503, "OriginalMessage": "busy"}, EndpointUnavailable),
        ("ModelError", 424, {"OriginalStatusCode": 429, "OriginalMessage": "slow down"}, EndpointThrottled),
    ],
)
def test_sagemaker_errors_map_to_named_errors(
    code: str, http_status: int, fields: dict[str, object] | None, error: type[WorkflowError]
) -> None:
    client = _sagemaker_client()
    with Stubber(client) as stub:
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code=code,
            service_message="simulated",
            http_status_code=http_status,
            modeled_fields=fields,
        )
        with pytest.raises(error) as caught:
            SageMakerEndpoint("bayroute-endpoint", client).invoke(b"png", "image/png")
    assert type(caught.value) is error
    assert caught.value.facts["error_code"] == code


def test_sagemaker_endpoint_unreachable_is_unavailable() -> None:
    client = boto3.client(
        "sagemaker-runtime",
        region_name="eu-west-1",
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(EndpointUnavailable, match="cannot reach"):
        SageMakerEndpoint("bayroute-endpoint", client).invoke(b"png", "image/png")


def test_endpoint_from_settings_picks_the_backend(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    settings = load_settings(env={})
    http_endpoint = endpoint_from_settings(replace(settings, inference_backend="http"))
    assert isinstance(http_endpoint, HttpEndpoint)
    assert http_endpoint.url == settings.endpoint_url
    sagemaker = endpoint_from_settings(replace(settings, inference_backend="sagemaker"), sagemaker_client=object())
    assert isinstance(sagemaker, SageMakerEndpoint)
    assert sagemaker.endpoint_name == settings.names.endpoint_name
    in_process = endpoint_from_settings(replace(settings, inference_backend="lambda", model_path=tiny_model_path))
    assert isinstance(in_process, InProcessEndpoint)
    answer = in_process.invoke(encode(Image.new("RGB", (32, 32), (0, 0, 255)), "PNG"), "image/png")
    assert answer.model_version == "tiny-test-1"
    assert answer.probabilities[1] > 0.9  # the tiny model calls blue "motorcycle"
