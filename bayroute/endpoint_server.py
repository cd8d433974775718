"""The model endpoint: an HTTP server speaking the SageMaker inference container contract.

The same server runs locally (the embedded stack, ``bayroute serve``) and in the SageMaker
bring-your-own-container image (``infra/endpoint``): SageMaker sends ``GET /ping`` and
``POST /invocations`` to port 8080.

Contract:
- ``GET /ping`` -> 200 ``{"status": "healthy", "model_version": ...}``; the model is loaded before the
  server accepts connections, so a listening server is a ready one.
- ``POST /invocations``, body = the image bytes, ``Content-Type`` ``image/png``, ``image/jpeg``, any other
  ``image/*`` or ``application/x-image`` (the format is read from the bytes, as in ``bayroute.imaging``),
  or ``application/x-npy``: a uint8 array [H, W, 3] or a batch [N, H, W, 3] at the model's input size.
  Answer 200, ``Content-Type: application/json``, body = the JSON list of class probabilities in label
  order, as SageMaker's built-in image-classification algorithm answers (a list of lists for an npy
  batch). ``Accept: application/json;verbose=1`` answers ``{"labels", "probabilities", "model_version"}``.
- Every answer of the model carries ``X-Amzn-SageMaker-Custom-Attributes`` (SageMaker returns it to the
  caller as ``CustomAttributes``): comma-separated ``key=value`` pairs, values percent-encoded, labels
  joined by ``|``: ``model_version=v3,labels=bicycle|motorcycle``.
- Errors, with a JSON body ``{"error": reason, "detail": ...}``: 400 the image (or array) cannot be
  decoded, ``error`` being the reason code of ``bayroute.errors`` (``truncated_image``...); 404 other paths;
  406 an ``Accept`` other than JSON; 411 no ``Content-Length``; 413 a body over ``max_request_bytes``
  (refused from ``Content-Length`` before reading it); 415 another content type; 500 the model failed.

Throughput: HTTP/1.1 keep-alive, Nagle off, one thread per connection. With ``batching`` on, requests
that arrive while the model is busy, or within ``batch_window_s`` of each other, run as one ONNX
Runtime batch: ORT releases the GIL, so decoding and HTTP work of other requests overlap it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from bayroute.errors import WorkflowError
from bayroute.imaging import DEFAULT_MAX_PIXELS, decode_png_payload

if TYPE_CHECKING:  # the contract helpers above the server are used where ONNX Runtime is not installed
    from bayroute.model.onnx_model import OnnxClassifier

log = logging.getLogger(__name__)

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
NPY_CONTENT_TYPE = "application/x-npy"
JSON_CONTENT_TYPE = "application/json"
IMAGE_CONTENT_TYPES = frozenset({"application/x-image"})  # plus every image/* type
LABEL_SEPARATOR = "|"
# Idle keep-alive connections are closed after this; SageMaker and our clients reconnect transparently.
IDLE_CONNECTION_SECONDS = 60.0
# SageMaker forwards at most 1024 visible ASCII characters of custom attributes.
MAX_CUSTOM_ATTRIBUTES_CHARS = 1024


def format_custom_attributes(model_version: str, labels: Sequence[str]) -> str:
    """``model_version=<v>,labels=<a>|<b>``: values percent-encoded so ``,``, ``=`` and ``|`` stay separators."""

    def quote(text: str) -> str:
        return urllib.parse.quote(text, safe="-._~:/+")

    value = f"model_version={quote(model_version)},labels={LABEL_SEPARATOR.join(quote(label) for label in labels)}"
    if len(value) > MAX_CUSTOM_ATTRIBUTES_CHARS:
        raise ValueError(f"custom attributes exceed {MAX_CUSTOM_ATTRIBUTES_CHARS} characters: {value[:80]}...")
    return value


def parse_custom_attributes(value: str | None) -> dict[str, str]:
    """The ``key=value`` pairs of a custom attributes string (values decoded); unknown text is ignored."""
    pairs: dict[str, str] = {}
    for item in (value or "").split(","):
        key, sep, raw = item.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = raw.strip()
    return pairs


def labels_from_custom_attributes(pairs: Mapping[str, str]) -> list[str] | None:
    raw = pairs.get("labels")
    if raw is None:
        return None
    return [urllib.parse.unquote(label) for label in raw.split(LABEL_SEPARATOR)]


def model_version_from_custom_attributes(pairs: Mapping[str, str]) -> str | None:
    raw = pairs.get("model_version")
    return None if raw is None else urllib.parse.unquote(raw)


def media_type(content_type: str | None) -> str:
    """``image/png`` of ``Image/PNG; charset=binary``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class InvocationAnswer:
    """One HTTP answer of the contract, independent of the transport."""

    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)


class _BadArray(ValueError):
    """An ``application/x-npy`` body that is not a uint8 image array of the model's input size."""


def _error(status: HTTPStatus, reason: str, detail: str) -> InvocationAnswer:
    return InvocationAnswer(int(status), json.dumps({"error": reason, "detail": detail}).encode("utf-8"))


class _Pending:
    __slots__ = ("done", "error", "images", "result")

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class DynamicBatcher:
    """Runs concurrent ``predict`` calls as shared ONNX Runtime batches, from one worker thread.

    The worker takes the first waiting request, then gathers whatever else arrives within ``window_s``
    (up to ``max_batch`` images), runs them as one batch and hands each caller its rows. Under load,
    requests also pile up while a batch runs, so batches grow with concurrency; alone, a request waits
    at most ``window_s``.
    """

    def __init__(self, model: OnnxClassifier, *, max_batch: int = 64, window_s: float = 0.001) -> None:
        self._model = model
        self._max_batch = max_batch
        self._window_s = window_s
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="bayroute-batcher", daemon=True)
        self.batches = 0
        self.images = 0
        self._worker.start()

    def predict(self, images: np.ndarray) -> np.ndarray:
        pending = _Pending(images)
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, count, stopping = [first], len(first.images), False
            deadline = time.perf_counter() + self._window_s
            while count < self._max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
                count += len(item.images)
            self._run_group(group)
            if stopping:
                return

    def _run_group(self, group: list[_Pending]) -> None:
        try:
            batch = group[0].images if len(group) == 1 else np.concatenate([p.images for p in group])
            probabilities = self._model.predict(batch)
        except BaseException as exc:  # every waiting caller must wake up, whatever happened
            for pending in group:
                pending.error = exc
                pending.done.set()
            return
        self.batches += 1
        self.images += len(batch)
        offset = 0
        for pending in group:
            pending.result = probabilities[offset : offset + len(pending.images)]
            offset += len(pending.images)
            pending.done.set()


class InferenceApp:
    """The contract without the transport: content negotiation, decoding, prediction, the answer."""

    def __init__(
        self,
        model: OnnxClassifier,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batching: bool = False,
        max_batch: int = 64,
        batch_window_s: float = 0.001,
    ) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self.batcher = DynamicBatcher(model, max_batch=max_batch, window_s=batch_window_s) if batching else None
        self.custom_attributes = format_custom_attributes(model.model_version, model.labels)

    def ping(self) -> InvocationAnswer:
        body = {"status": "healthy", "model_version": self.model.model_version}
        return InvocationAnswer(int(HTTPStatus.OK), json.dumps(body).encode("utf-8"))

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None) -> InvocationAnswer:
        media = media_type(content_type)
        is_array = media == NPY_CONTENT_TYPE
        if not (is_array or media in IMAGE_CONTENT_TYPES or media.startswith("image/")):
            return _error(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                f"content type {content_type!r} is not accepted; send image/png, image/jpeg, "
                f"application/x-image or {NPY_CONTENT_TYPE}",
            )
        verbose = _verbose_json(accept)
        if verbose is None:
            return _error(HTTPStatus.NOT_ACCEPTABLE, "not_acceptable", f"cannot answer {accept!r}; only JSON")
        try:
            images, is_batch = self._array(body) if is_array else (self._image(body), False)
        except WorkflowError as exc:
            return _error(HTTPStatus.BAD_REQUEST, exc.reason, exc.detail)
        except _BadArray as exc:
            return _error(HTTPStatus.BAD_REQUEST, "invalid_array", str(exc))
        try:
            probabilities = self.batcher.predict(images) if self.batcher else self.model.predict(images)
        except Exception as exc:  # ORT failures carry their own types; the caller only needs "the model failed"
            log.exception("model failure on a %s request of %d bytes", media, len(body))
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "model_error", f"{type(exc).__name__}: {exc}")
        rows = probabilities.tolist()
        result: Any = rows if is_batch else rows[0]
        if verbose:
            result = {"labels": self.model.labels, "probabilities": result, "model_version": self.model.model_version}
        return InvocationAnswer(
            int(HTTPStatus.OK),
            json.dumps(result).encode("utf-8"),
            headers={CUSTOM_ATTRIBUTES_HEADER: self.custom_attributes},
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    def _image(self, body: bytes) -> np.ndarray:
        height, _ = self.model.input_size
        return decode_png_payload(body, height, max_pixels=self.max_pixels)[np.newaxis]

    def _array(self, body: bytes) -> tuple[np.ndarray, bool]:
        """The images of an npy body as a batch, and whether the body was a batch (else one image)."""
        array = _load_npy(body)
        height, width = self.model.input_size
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-3:] != (height, width, 3):
            expected = f"uint8 [{height}, {width}, 3] or [N, {height}, {width}, 3]"
            raise _BadArray(f"expected {expected}, got {array.dtype} {array.shape}")
        if array.ndim == 4 and array.shape[0] == 0:
            raise _BadArray("the batch is empty")
        return (array, True) if array.ndim == 4 else (array[np.newaxis], False)


def _read_npy_header(stream: io.BytesIO, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def _load_npy(body: bytes) -> np.ndarray:
    """An npy array, checking the declared shape against the bytes present before allocating anything."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        shape, fortran_order, dtype = _read_npy_header(stream, version)
    except (ValueError, OSError, SyntaxError) as exc:
        raise _BadArray(f"not an npy array: {exc}") from exc
    if dtype.hasobject:
        raise _BadArray("object arrays are not accepted")
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    present = len(body) - stream.tell()
    if declared != present:
        raise _BadArray(f"the npy header declares {shape} {dtype} ({declared} bytes) but {present} bytes follow")
    array = np.frombuffer(body, dtype=dtype, offset=stream.tell()).reshape(shape, order="F" if fortran_order else "C")
    return np.ascontiguousarray(array)


def _verbose_json(accept: str | None) -> bool | None:
    """False: the plain list; True: the verbose object; None: the client accepts no JSON."""
    if not accept:
        return False
    for item in accept.split(","):
        kind, *params = (part.strip().lower() for part in item.split(";"))
        if kind in (JSON_CONTENT_TYPE, "application/*", "*/*"):
            return any(param.replace(" ", "") in ("verbose=1", "verbose=true") for param in params)
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "bayroute-endpoint"
    timeout = IDLE_CONNECTION_SECONDS
    server: _Server

    def do_GET(self) -> None:
        with self.server.busy():
            if self._path() == "/ping":
                self._send(self.server.app.ping())
            else:
                self._send(_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for GET {self._path()}"))

    def do_POST(self) -> None:
        with self.server.busy():
            if self._path() != "/invocations":
                self.close_connection = True  # the body, if any, is left unread
                self._send(_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for POST {self._path()}"))
                return
            body = self._read_body()
            if body is None:
                return
            answer = self.server.app.invoke(body, self.headers.get("Content-Type"), self.headers.get("Accept"))
            self._send(answer)

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering why it cannot be read (and closing the connection)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or "Content-Length" not in self.headers:
            self.close_connection = True
            self._send(_error(HTTPStatus.LENGTH_REQUIRED, "length_required", "send the body with Content-Length"))
            return None
        try:
            length = int(self.headers["Content-Length"])
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._send(_error(HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length is not a byte count"))
            return None
        limit = self.server.max_request_bytes
        if length > limit:
            self.close_connection = True
            detail = f"the body has {length} bytes, over the limit of {limit}"
            self._send(_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", detail))
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body: nobody to answer
            return None
        return body

    def _send(self, answer: InvocationAnswer) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: InferenceApp, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self._connections: set[socket.socket] = set()
        self._in_flight = 0
        self._state = threading.Condition()
        super().__init__(address, _Handler)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Counts a request as in flight, so a graceful stop waits for its answer."""
        with self._state:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._state:
                self._in_flight -= 1
                self._state.notify_all()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._state:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._state:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s disconnected", client_address)
        else:
            log.exception("error while serving %s", client_address)

    def drain(self, timeout: float) -> None:
        """Wait for requests in progress to be answered, then close every connection (idle keep-alives too)."""
        with self._state:
            self._state.wait_for(lambda: self._in_flight == 0, timeout=timeout)
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class ModelServer:
    """The endpoint server on ``host:port`` (port 0: an ephemeral port, see ``.port``), served from a thread."""

    def __init__(
        self,
        model: OnnxClassifier,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        max_request_bytes: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batching: bool = False,
        max_batch: int = 64,
        batch_window_s: float = 0.001,
    ) -> None:
        self.model = model
        self._host = host
        self._requested_port = port
        self._max_request_bytes = max_request_bytes
        self._app_options: dict[str, Any] = {
            "max_pixels": max_pixels,
            "batching": batching,
            "max_batch": max_batch,
            "batch_window_s": batch_window_s,
        }
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the model server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    @property
    def app(self) -> InferenceApp:
        if self._server is None:
            raise RuntimeError("the model server is not started")
        return self._server.app

    def start(self) -> ModelServer:
        if self._server is not None:
            raise RuntimeError("the model server is already started")
        app = InferenceApp(self.model, **self._app_options)
        self._server = _Server((self._host, self._requested_port), app, self._max_request_bytes)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="bayroute-endpoint", daemon=True
        )
        self._thread.start()
        log.info("model endpoint %s serving %s on %s", self.model.model_version, self.model.path, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to ``timeout``), close every connection."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join(timeout=timeout)
        server.drain(timeout)
        server.server_close()
        server.app.close()
        self._server = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
