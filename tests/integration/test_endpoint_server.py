"""The model endpoint over real HTTP on 127.0.0.1: the SageMaker container contract, limits, keep-alive, load."""

from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bayroute.endpoint_server import ModelServer
from bayroute.model.onnx_model import OnnxClassifier
from bayroute.serving import (
    CUSTOM_ATTRIBUTES_HEADER,
    format_custom_attributes,
    labels_from_custom_attributes,
    model_version_from_custom_attributes,
    parse_custom_attributes,
)
from tests.fixtures_model import model_fixture, tiny_model_fixture  # noqa: F401  (pytest fixtures)
from tests.hostile import OK, HostileCase, encode, hostile_cases
from tests.serve_process import first_line, serve_process

MAX_REQUEST_BYTES = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def classifier(model_path: Path) -> OnnxClassifier:
    return OnnxClassifier(model_path)


@pytest.fixture(scope="module")
def server(classifier: OnnxClassifier) -> Iterator[ModelServer]:
    with ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=MAX_REQUEST_BYTES) as running:
        yield running


@pytest.fixture(scope="module")
def real_images(shared_dataset: Path) -> list[tuple[str, bytes]]:
    """A few real CIFAR images of each class: (class, PNG bytes)."""
    return [
        (label, path.read_bytes())
        for label in ("bicycle", "motorcycle")
        for path in sorted((shared_dataset / "train" / label).glob("*.png"))[:8]
    ]


def _post(
    port: int, body: bytes, content_type: str | None = "image/png", accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {} if content_type is None else {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    connection.request("POST", "/invocations", body=body, headers=headers)
    response = connection.getresponse()
    answer = (response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    connection.close()
    return answer


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes: what a client sees byte for byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _expected(classifier: OnnxClassifier, png: bytes) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return classifier.predict(pixels)[0]


def test_ping(server: ModelServer, classifier: OnnxClassifier) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/ping")
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"status": "healthy", "model_version": classifier.model_version}


def test_real_images_get_probabilities_in_label_order(
    server: ModelServer, classifier: OnnxClassifier, real_images: list[tuple[str, bytes]]
) -> None:
    for _, png in real_images:
        status, headers, body = _post(server.port, png)
        assert status == 200, body
        assert headers["content-type"] == "application/json"
        probabilities = json.loads(body)
        assert len(probabilities) == len(classifier.labels) == 2
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert np.allclose(probabilities, _expected(classifier, png), atol=1e-6)
        attributes = parse_custom_attributes(headers[CUSTOM_ATTRIBUTES_HEADER.lower()])
        assert labels_from_custom_attributes(attributes) == classifier.labels
        assert model_version_from_custom_attributes(attributes) == classifier.model_version


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/x-image", "image/webp", "IMAGE/PNG; q=1"])
def test_other_image_content_types_are_accepted(
    server: ModelServer, real_images: list[tuple[str, bytes]], content_type: str
) -> None:
    picture = Image.open(io.BytesIO(real_images[0][1])).convert("RGB")
    fmt = {"image/jpeg": "JPEG", "image/webp": "WEBP"}.get(content_type, "PNG")
    status, _, body = _post(server.port, encode(picture, fmt), content_type)
    assert status == 200, body
    assert len(json.loads(body)) == 2


def test_verbose_json_names_labels_and_version(server: ModelServer, classifier: OnnxClassifier) -> None:
    png = encode(Image.new("RGB", (32, 32), (200, 30, 30)), "PNG")
    status, _, body = _post(server.port, png, accept="application/json;verbose=1")
    assert status == 200
    answer = json.loads(body)
    assert answer["labels"] == classifier.labels
    assert answer["model_version"] == classifier.model_version
    assert len(answer["probabilities"]) == 2


def test_npy_arrays_single_and_batch(server: ModelServer, classifier: OnnxClassifier) -> None:
    batch = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    expected = classifier.predict(batch)
    for array, answer_shape in ((batch[0], (2,)), (batch, (5, 2))):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        status, _, body = _post(server.port, buffer.getvalue(), "application/x-npy")
        assert status == 200, body
        answer = np.array(json.loads(body))
        assert answer.shape == answer_shape
        assert np.allclose(answer, expected if answer.ndim == 2 else expected[0], atol=1e-6)


@pytest.mark.parametrize(
    ("array", "detail"),
    [
        (np.zeros((32, 32, 3), dtype=np.float32), "expected uint8"),
        (np.zeros((16, 16, 3), dtype=np.uint8), "expected uint8"),
        (np.zeros((0, 32, 32, 3), dtype=np.uint8), "empty"),
    ],
)
def test_bad_npy_arrays_are_400(server: ModelServer, array: np.ndarray, detail: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    status, _, body = _post(server.port, buffer.getvalue(), "application/x-npy")
    assert status == 400
    assert json.loads(body)["error"] == "invalid_array"
    assert detail in json.loads(body)["detail"]


def test_an_npy_header_cannot_make_the_server_allocate(server: ModelServer) -> None:
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (100000000000, 32, 32, 3), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(100)
    status, _, answer = _post(server.port, body, "application/x-npy")
    assert status == 400
    assert "bytes follow" in json.loads(answer)["detail"]


CASES = hostile_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_bodies_get_200_or_a_400_with_their_reason(server: ModelServer, case: HostileCase) -> None:
    status, headers, body = _post(server.port, case.data, "application/x-image")
    if case.expected == OK:
        assert status == 200, body
        assert sum(json.loads(body)) == pytest.approx(1.0, abs=1e-5)
    else:
        assert status == 400
        assert headers["content-type"] == "application/json"
        error = json.loads(body)
        assert error["error"] == case.expected
        assert error["detail"]


def test_unsupported_content_type_is_415(server: ModelServer) -> None:
    for content_type in ("text/plain", "application/json", None):
        status, _, body = _post(server.port, b"hello", content_type)
        assert status == 415
        assert json.loads(body)["error"] == "unsupported_media_type"


def test_non_json_accept_is_406(server: ModelServer, real_images: list[tuple[str, bytes]]) -> None:
    status, _, body = _post(server.port, real_images[0][1], accept="text/csv")
    assert status == 406
    assert json.loads(body)["error"] == "not_acceptable"


def test_unknown_paths_are_404(server: ModelServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    assert response.status == 404
    assert json.loads(response.read())["error"] == "not_found"


def test_a_body_over_the_limit_is_refused_from_its_content_length(classifier: OnnxClassifier) -> None:
    with ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=10_000) as small:
        status, _, body = _post(small.port, bytes(10_001), "image/png")
        assert status == 413
        assert json.loads(body)["error"] == "payload_too_large"
        # Only headers, announcing 1 GB that never comes: the answer arrives without the body being read.
        started = time.monotonic()
        raw = _raw_exchange(
            small.port,
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 413")
        assert b"Connection: close" in raw
        assert time.monotonic() - started < 5
        status, _, _ = _post(small.port, encode(Image.new("RGB", (32, 32)), "PNG"))
        assert status == 200


def test_a_body_without_length_is_411(server: ModelServer) -> None:
    raw = _raw_exchange(
        server.port,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 411")


def test_keep_alive_serves_many_requests_on_one_connection(
    server: ModelServer, real_images: list[tuple[str, bytes]]
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/ping")
    connection.getresponse().read()
    first_socket = connection.sock
    for _, png in real_images * 2:
        connection.request("POST", "/invocations", body=png, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        assert response.status == 200
        response.read()
        assert connection.sock is first_socket  # http.client drops the socket when the server closes it
    # An error answer whose body was read keeps the connection too.
    connection.request("POST", "/invocations", body=b"text", headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    assert response.status == 400
    response.read()
    assert connection.sock is first_socket
    connection.close()


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batching"])
def test_concurrent_requests_each_get_their_own_answer(
    classifier: OnnxClassifier, real_images: list[tuple[str, bytes]], batching: bool
) -> None:
    expected = {png: _expected(classifier, png) for _, png in real_images}

    def client(offset: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        checked = 0
        for index in range(24):
            _, png = real_images[(offset + index) % len(real_images)]
            connection.request("POST", "/invocations", body=png, headers={"Content-Type": "image/png"})
            response = connection.getresponse()
            assert response.status == 200
            assert np.allclose(json.loads(response.read()), expected[png], atol=1e-6)
            checked += 1
        connection.close()
        return checked

    with (
        ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=MAX_REQUEST_BYTES, batching=batching) as running,
        ThreadPoolExecutor(max_workers=16) as pool,
    ):
        assert sum(pool.map(client, range(16))) == 16 * 24
        calls = running.model_calls
        assert calls.images == 16 * 24
        if batching:
            assert calls.runs < calls.images  # some requests really shared a batch
        else:
            assert calls.runs == calls.images


@pytest.mark.parametrize("batching", [False, True], ids=["direct", "batching"])
def test_a_model_failure_is_500(classifier: OnnxClassifier, monkeypatch: pytest.MonkeyPatch, batching: bool) -> None:
    def broken(images: np.ndarray) -> np.ndarray:
        raise RuntimeError("ORT session exploded")

    with ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=MAX_REQUEST_BYTES, batching=batching) as running:
        monkeypatch.setattr(classifier, "predict", broken)
        status, _, body = _post(running.port, encode(Image.new("RGB", (32, 32)), "PNG"))
    assert status == 500
    assert json.loads(body) == {"error": "model_error", "detail": "RuntimeError: ORT session exploded"}


def test_a_model_that_answers_too_few_rows_is_a_500_for_each_request_not_a_hang(
    classifier: OnnxClassifier, monkeypatch: pytest.MonkeyPatch, real_images: list[tuple[str, bytes]]
) -> None:
    real_predict = classifier.predict
    monkeypatch.setattr(classifier, "predict", lambda images: real_predict(images)[:-1])
    with ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=MAX_REQUEST_BYTES) as running:
        status, _, body = _post(running.port, real_images[0][1])
        monkeypatch.setattr(classifier, "predict", real_predict)
        assert _post(running.port, real_images[0][1])[0] == 200  # and the server goes on
    assert status == 500
    assert json.loads(body) == {"error": "model_error", "detail": "ValueError: the model answered 0 rows for 1 images"}


def test_stop_finishes_requests_in_progress_and_closes_idle_connections(
    classifier: OnnxClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_predict = classifier.predict
    entered = threading.Event()

    def slow(images: np.ndarray) -> np.ndarray:
        entered.set()
        time.sleep(0.5)
        return real_predict(images)

    running = ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=MAX_REQUEST_BYTES).start()
    port = running.port
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/ping")
    idle.getresponse().read()
    monkeypatch.setattr(classifier, "predict", slow)
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_progress = pool.submit(_post, port, encode(Image.new("RGB", (32, 32)), "PNG"))
        assert entered.wait(5)
        running.stop()
        assert in_progress.result(timeout=5)[0] == 200
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        idle.request("GET", "/ping")
        idle.getresponse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_custom_attributes_round_trip_odd_characters() -> None:
    value = format_custom_attributes("2024-05-01,run=7|b", ["bi cycle", "motör|cycle"])
    assert value.isascii() and value.isprintable()
    pairs = parse_custom_attributes(value)
    assert model_version_from_custom_attributes(pairs) == "2024-05-01,run=7|b"
    assert labels_from_custom_attributes(pairs) == ["bi cycle", "motör|cycle"]
    with pytest.raises(ValueError, match="1024"):
        format_custom_attributes("v", ["x" * 1100])


def test_bayroute_serve_runs_in_the_foreground_until_sigterm(tiny_model_path: Path) -> None:
    with serve_process(tiny_model_path, "--workers", "1", "--model-threads", "1") as process:
        line = first_line(process)
        assert "serving model tiny-test-1" in line
        assert "1 model thread, batching)" in line  # threads read back from the ONNX Runtime session
        port = int(line.rsplit(":", 1)[1])
        status, _, body = _post(port, encode(Image.new("RGB", (32, 32), (250, 0, 0)), "PNG"))
        assert status == 200
        assert json.loads(body)[0] > 0.9  # the tiny model calls red "bicycle"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


class HoldsTheFirstCall:
    """The real model, but its first call waits until ``release`` is set (the loop, running it, waits too)."""

    def __init__(self, classifier: OnnxClassifier) -> None:
        self.real_predict = classifier.predict  # taken before the test puts ``predict`` in its place
        self.inside = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        if len(self.sizes) == 1:
            self.inside.set()
            assert self.release.wait(timeout=10)
        return self.real_predict(images)


@pytest.mark.parametrize(
    ("batching", "max_batch", "sizes"),
    [(True, 64, [1, 3]), (True, 2, [1, 2, 1]), (False, 64, [1, 1, 1, 1])],
    ids=["batching", "batches-capped-at-2", "direct"],
)
def test_requests_that_arrive_while_the_model_runs_share_its_next_turn(
    classifier: OnnxClassifier,
    monkeypatch: pytest.MonkeyPatch,
    real_images: list[tuple[str, bytes]],
    batching: bool,
    max_batch: int,
    sizes: list[int],
) -> None:
    expected = [_expected(classifier, png) for _, png in real_images[:4]]
    model = HoldsTheFirstCall(classifier)
    monkeypatch.setattr(classifier, "predict", model.predict)
    with ModelServer(
        classifier, "127.0.0.1", 0, max_request_bytes=MAX_REQUEST_BYTES, batching=batching, max_batch=max_batch
    ) as running:
        connections = [http.client.HTTPConnection("127.0.0.1", running.port, timeout=10) for _ in range(4)]
        for connection in connections:  # every connection accepted before the model is held
            connection.request("GET", "/ping")
            connection.getresponse().read()
        for connection, (_, png) in zip(connections[:1], real_images, strict=False):
            connection.request("POST", "/invocations", body=png, headers={"Content-Type": "image/png"})
        assert model.inside.wait(timeout=5)
        # The server's loop is inside the model: these three requests wait in the socket buffers.
        for connection, (_, png) in zip(connections[1:], real_images[1:4], strict=True):
            connection.request("POST", "/invocations", body=png, headers={"Content-Type": "image/png"})
        model.release.set()
        answers = []
        for connection in connections:
            response = connection.getresponse()
            assert response.status == 200
            answers.append(json.loads(response.read()))
            connection.close()
        calls = running.model_calls
    assert model.sizes == sizes
    assert (calls.runs, calls.images) == (len(sizes), 4)
    for answer, probabilities in zip(answers, expected, strict=True):
        assert np.allclose(answer, probabilities, atol=1e-6)


def test_a_model_failure_answers_every_request_of_its_batch(
    classifier: OnnxClassifier, monkeypatch: pytest.MonkeyPatch, real_images: list[tuple[str, bytes]]
) -> None:
    model = HoldsTheFirstCall(classifier)

    def fails_after_the_first(images: np.ndarray) -> np.ndarray:
        if model.sizes:
            model.sizes.append(len(images))
            raise RuntimeError("ORT session exploded")
        return model.predict(images)

    monkeypatch.setattr(classifier, "predict", fails_after_the_first)
    with ModelServer(classifier, "127.0.0.1", 0, max_request_bytes=MAX_REQUEST_BYTES, batching=True) as running:
        connections = [http.client.HTTPConnection("127.0.0.1", running.port, timeout=10) for _ in range(3)]
        for connection in connections:
            connection.request("GET", "/ping")
            connection.getresponse().read()
        connections[0].request("POST", "/invocations", body=real_images[0][1], headers={"Content-Type": "image/png"})
        assert model.inside.wait(timeout=5)
        for connection in connections[1:]:
            connection.request("POST", "/invocations", body=real_images[1][1], headers={"Content-Type": "image/png"})
        model.release.set()
        statuses = []
        for connection in connections:
            response = connection.getresponse()
            statuses.append((response.status, json.loads(response.read())))
        # The server goes on serving after a failed batch.
        connections[0].request("GET", "/ping")
        assert connections[0].getresponse().status == 200
        for connection in connections:
            connection.close()
    assert model.sizes == [1, 2]
    assert statuses[0][0] == 200
    assert statuses[1:] == [(500, {"error": "model_error", "detail": "RuntimeError: ORT session exploded"})] * 2
