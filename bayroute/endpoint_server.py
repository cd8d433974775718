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

Transport: HTTP/1.1 with keep-alive (``Connection: close`` and HTTP/1.0 without keep-alive are honoured,
``Expect: 100-continue`` is answered), an asyncio server on one event-loop thread. That thread parses
requests and decodes the small images (big bodies are decoded on a worker thread, so one photo does not hold
up the others); the model runs on other threads, and ONNX Runtime releases the GIL, so inference overlaps
the HTTP and decoding work of other requests. With ``batching`` on, requests that arrive while the model is
busy, or within ``batch_window_s`` of each other, run as one ONNX Runtime batch; off, each request runs
alone. A connection closed after an error answer is half-closed first and drained briefly, so the client
reads the answer instead of a reset. ``stop()`` stops accepting, lets requests in progress finish, then
closes every connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
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
# A request head (request line and headers) longer than this is refused (431) and the connection closed.
MAX_HEAD_BYTES = 64 * 1024
# Bodies up to this size are decoded on the event loop (a 32x32 PNG takes a fraction of a millisecond); bigger
# ones (photos) on a worker thread, so that they do not hold up the other connections.
INLINE_DECODE_BYTES = 64 * 1024
# After an answer that closes the connection, unread request bytes are drained for at most this long.
LINGER_SECONDS = 1.0


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


class DynamicBatcher:
    """Runs concurrent predictions as shared ONNX Runtime batches, ``workers`` batches at a time.

    One thread gathers: once a worker is free, it takes the first waiting request, then whatever else arrives
    within ``window_s`` (up to ``max_batch`` images), and hands the batch to the free worker. Under load,
    requests pile up while the workers are busy, so batches grow with concurrency; alone, a request waits at
    most ``window_s``. Two workers by default: this small model is compute-bound (a batch costs about as much
    per image as one image does), so what batching saves is per-call overhead, and a second batch running
    beside the first is what keeps both cores busy. The queue has exactly one consumer, the gatherer.
    """

    def __init__(
        self, model: OnnxClassifier, *, max_batch: int = 64, window_s: float = 0.001, workers: int = 2
    ) -> None:
        if workers < 1:
            raise ValueError(f"a batcher needs at least one worker, got {workers}")
        self._model = model
        self._max_batch = max_batch
        self._window_s = window_s
        self._queue: queue.SimpleQueue[tuple[np.ndarray, concurrent.futures.Future[np.ndarray]] | None] = (
            queue.SimpleQueue()
        )
        self._free_workers = threading.BoundedSemaphore(workers)
        self._workers = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bayroute-batch")
        self._gatherer = threading.Thread(target=self._gather, name="bayroute-batcher", daemon=True)
        self._stats_lock = threading.Lock()
        self.batches = 0
        self.images = 0
        self._gatherer.start()

    def submit(self, images: np.ndarray) -> concurrent.futures.Future[np.ndarray]:
        """The probabilities of ``images`` [N, H, W, 3], once their batch has run."""
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        self._queue.put((images, future))
        return future

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.submit(images).result()

    def close(self) -> None:
        self._queue.put(None)
        self._gatherer.join(timeout=5)
        self._workers.shutdown(wait=True)

    def _gather(self) -> None:
        while True:
            self._free_workers.acquire()  # requests queue up (and batches grow) while every worker is busy
            first = self._queue.get()
            if first is None:
                return
            group, count, stopping = [first], len(first[0]), False
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
                count += len(item[0])
            self._workers.submit(self._run_and_free, group)
            if stopping:
                return

    def _run_and_free(self, group: list[tuple[np.ndarray, concurrent.futures.Future[np.ndarray]]]) -> None:
        try:
            self._run_group(group)
        finally:
            self._free_workers.release()

    def _run_group(self, group: list[tuple[np.ndarray, concurrent.futures.Future[np.ndarray]]]) -> None:
        try:
            batch = group[0][0] if len(group) == 1 else np.concatenate([images for images, _ in group])
            probabilities = self._model.predict(batch)
        except BaseException as exc:  # every waiting caller must wake up, whatever happened
            for _, future in group:
                future.set_exception(exc)
            return
        with self._stats_lock:
            self.batches += 1
            self.images += len(batch)
        offset = 0
        for images, future in group:
            future.set_result(probabilities[offset : offset + len(images)])
            offset += len(images)


@dataclass(frozen=True)
class PreparedRequest:
    """A decoded invocation, ready for the model: the images as a batch, and how to shape the answer."""

    images: np.ndarray
    is_batch: bool
    verbose: bool
    media: str
    body_bytes: int


class InferenceApp:
    """The contract without the transport: content negotiation, decoding, prediction, the answer.

    ``invoke`` does it all in the calling thread. A server splits it: ``prepare`` (negotiation, decoding),
    the model (``predict_async``), then ``answer``.
    """

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
        self._answer_headers = {CUSTOM_ATTRIBUTES_HEADER: self.custom_attributes}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def ping(self) -> InvocationAnswer:
        body = {"status": "healthy", "model_version": self.model.model_version}
        return InvocationAnswer(int(HTTPStatus.OK), json.dumps(body).encode("utf-8"))

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None) -> InvocationAnswer:
        prepared = self.prepare(body, content_type, accept)
        if isinstance(prepared, InvocationAnswer):
            return prepared
        try:
            probabilities = (
                self.batcher.predict(prepared.images) if self.batcher else self.model.predict(prepared.images)
            )
        except Exception as exc:  # ORT failures carry their own types; the caller only needs "the model failed"
            return self.model_failure(prepared, exc)
        return self.answer(prepared, probabilities)

    def prepare(self, body: bytes, content_type: str | None, accept: str | None) -> PreparedRequest | InvocationAnswer:
        """The decoded request, or the error answer (415, 406, 400) that stops it before the model."""
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
        return PreparedRequest(images, is_batch, verbose, media, len(body))

    def predict_async(self, images: np.ndarray) -> concurrent.futures.Future[np.ndarray]:
        """The model's answer for ``images``, computed off the calling thread (batched when batching is on)."""
        if self.batcher is not None:
            return self.batcher.submit(images)
        with self._executor_lock:
            if self._executor is None:
                # Two threads: one request's inference overlaps the next one's hand-over, and ORT's own
                # intra-op pool does the rest.
                self._executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="bayroute-model")
            return self._executor.submit(self.model.predict, images)

    def answer(self, prepared: PreparedRequest, probabilities: np.ndarray) -> InvocationAnswer:
        rows = probabilities.tolist()
        result: Any = rows if prepared.is_batch else rows[0]
        if prepared.verbose:
            result = {"labels": self.model.labels, "probabilities": result, "model_version": self.model.model_version}
        return InvocationAnswer(int(HTTPStatus.OK), json.dumps(result).encode("utf-8"), headers=self._answer_headers)

    def model_failure(self, prepared: PreparedRequest, exc: BaseException) -> InvocationAnswer:
        log.error("model failure on a %s request of %d bytes", prepared.media, prepared.body_bytes, exc_info=exc)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "model_error", f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

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


_REASONS = {status.value: status.phrase for status in HTTPStatus}
# PNG payloads whose header declares at most this many pixels a side are decoded on the event loop.
_INLINE_PNG_SIDE = 64
_INLINE_NPY_BYTES = 1024 * 1024


def _http_answer(status: int, body: bytes, content_type: str, headers: Mapping[str, str], close: bool) -> bytes:
    """One HTTP/1.1 answer, head and body in one buffer (one write, one segment for small answers)."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        "Server: bayroute-endpoint",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _decodes_quickly(body: bytes, media: str) -> bool:
    """Whether decoding ``body`` takes well under a millisecond: a small PNG (the workflow's payload) or a small
    npy array. Anything else (photos, other formats) is decoded on a worker thread."""
    if media == NPY_CONTENT_TYPE:
        return len(body) <= _INLINE_NPY_BYTES
    return (
        len(body) <= INLINE_DECODE_BYTES
        and body[:8] == b"\x89PNG\r\n\x1a\n"
        and body[12:16] == b"IHDR"
        and int.from_bytes(body[16:20], "big") <= _INLINE_PNG_SIDE
        and int.from_bytes(body[20:24], "big") <= _INLINE_PNG_SIDE
    )


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Run ``callback`` on the server's loop, from a model or decoding thread (dropped once the loop is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


@dataclass
class _Request:
    method: str
    path: str
    keep_alive: bool
    headers: dict[str, str]


class _ServerState:
    """What the connections of one server share: the app, limits, open connections and requests in flight."""

    def __init__(self, app: InferenceApp, max_request_bytes: int, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.loop = loop
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.decoder = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="bayroute-decode")

    def started(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: requests are answered one at a time, in order (pipelined ones wait)."""

    def __init__(self, state: _ServerState) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._request: _Request | None = None  # its head is read; its body may still be arriving
        self._body_length = 0
        self._busy = False  # a request is being decoded or is in the model
        self._closing = False  # the last answer is written; draining what the client still sends
        self._peer_done = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._state.connections.add(self)
        self._last_active = self._state.loop.time()
        self._idle_timer = self._state.loop.call_later(IDLE_CONNECTION_SECONDS, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering after a final answer: the rest of an unread body, discarded
        self._buffer += data
        self._last_active = self._state.loop.time()
        if not self._busy:
            self._process()

    def eof_received(self) -> bool:
        self._peer_done = True
        # Keep the transport open while an answer is still owed; close it otherwise.
        return self._busy

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    # -- requests --------------------------------------------------------------------------------------

    def _process(self) -> None:
        while not self._busy and not self._closing and self._transport is not None:
            if self._request is None and not self._read_head():
                return
            request = self._request
            assert request is not None
            if len(self._buffer) < self._body_length:
                return
            body = bytes(self._buffer[: self._body_length])
            del self._buffer[: self._body_length]
            self._request, self._body_length = None, 0
            self._handle(request, body)

    def _read_head(self) -> bool:
        """Parse the next request head (answering and closing when it is unacceptable); True once one is read."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._final(_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "bad_request", "request head too long"))
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._final(
                _error(HTTPStatus.BAD_REQUEST, "bad_request", f"not an HTTP/1.x request line: {lines[0][:80]!r}")
            )
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._final(_error(HTTPStatus.BAD_REQUEST, "bad_request", f"malformed header line {line[:80]!r}"))
                return False
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers and key != "content-length" else value
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        request = _Request(method, target.split("?", 1)[0], keep_alive, headers)
        return self._accept(request)

    def _accept(self, request: _Request) -> bool:
        """Route the request and check its body's framing; True when its body is to be read next."""
        if request.method == "GET" and "content-length" not in request.headers:
            if request.path == "/ping":
                self._write(self._state.app.ping(), request.keep_alive)
            else:
                self._write(_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for GET {request.path}"), False)
            return False
        if request.method != "POST" or request.path != "/invocations":
            self._final(_error(HTTPStatus.NOT_FOUND, "not_found", f"no route for {request.method} {request.path}"))
            return False
        headers = request.headers
        if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" not in headers:
            self._final(_error(HTTPStatus.LENGTH_REQUIRED, "length_required", "send the body with Content-Length"))
            return False
        try:
            length = int(headers["content-length"])
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._final(_error(HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length is not a byte count"))
            return False
        limit = self._state.max_request_bytes
        if length > limit:
            detail = f"the body has {length} bytes, over the limit of {limit}"
            self._final(_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", detail))
            return False
        if headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._request, self._body_length = request, length
        return True

    def _handle(self, request: _Request, body: bytes) -> None:
        state = self._state
        self._busy = True
        state.started()
        content_type, accept = request.headers.get("content-type"), request.headers.get("accept")
        if _decodes_quickly(body, media_type(content_type)):
            self._prepared(request, self._safely(state.app.prepare, body, content_type, accept))
            return
        future = state.decoder.submit(self._safely, state.app.prepare, body, content_type, accept)
        future.add_done_callback(lambda done: _on_loop(state.loop, self._prepared, request, done.result()))

    def _prepared(self, request: _Request, prepared: PreparedRequest | InvocationAnswer) -> None:
        if isinstance(prepared, InvocationAnswer):
            self._answered(request, prepared)
            return
        state = self._state
        try:
            future = state.app.predict_async(prepared.images)
        except RuntimeError as exc:  # the model's threads are gone: the server is stopping
            self._answered(request, state.app.model_failure(prepared, exc))
            return
        future.add_done_callback(lambda done: state.loop.call_soon_threadsafe(self._predicted, request, prepared, done))

    def _predicted(
        self, request: _Request, prepared: PreparedRequest, done: concurrent.futures.Future[np.ndarray]
    ) -> None:
        app = self._state.app
        error = done.exception()
        answer = app.model_failure(prepared, error) if error is not None else app.answer(prepared, done.result())
        self._answered(request, answer)

    def _answered(self, request: _Request, answer: InvocationAnswer) -> None:
        self._state.finished()
        self._busy = False
        if self._transport is None:
            return  # the client went away while we worked: nobody to answer
        if self._peer_done or not request.keep_alive:
            self._final(answer)
            return
        self._write(answer, keep_alive=True)
        self._process()  # a pipelined request may already be waiting

    @staticmethod
    def _safely(
        prepare: Callable[[bytes, str | None, str | None], PreparedRequest | InvocationAnswer],
        body: bytes,
        content_type: str | None,
        accept: str | None,
    ) -> PreparedRequest | InvocationAnswer:
        try:
            return prepare(body, content_type, accept)
        except Exception as exc:  # a decoder bug must cost one answer, not the connection or the loop
            log.exception("failed to decode a %s request of %d bytes", content_type, len(body))
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", f"{type(exc).__name__}: {exc}")

    # -- answers and closing ---------------------------------------------------------------------------

    def _write(self, answer: InvocationAnswer, keep_alive: bool) -> None:
        if self._transport is not None:
            self._transport.write(
                _http_answer(answer.status, answer.body, answer.content_type, answer.headers, not keep_alive)
            )
            self._last_active = self._state.loop.time()
        if not keep_alive:
            self._linger()

    def _final(self, answer: InvocationAnswer) -> None:
        """Answer, then close: the client is told (``Connection: close``), and the rest of its body is drained."""
        self._write(answer, keep_alive=False)

    def _linger(self) -> None:
        """Half-close, discard what the client still sends, close when it does (or after LINGER_SECONDS): closing
        with unread bytes would reset the connection and could destroy the answer before the client reads it."""
        self._closing = True
        self._buffer.clear()
        transport = self._transport
        if transport is None:
            return
        if self._peer_done or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._state.loop.call_later(LINGER_SECONDS, transport.close)

    def _check_idle(self) -> None:
        if self._transport is None:
            return
        idle_for = self._state.loop.time() - self._last_active
        if not self._busy and idle_for >= IDLE_CONNECTION_SECONDS:
            self._transport.close()
            return
        self._idle_timer = self._state.loop.call_later(max(0.1, IDLE_CONNECTION_SECONDS - idle_for), self._check_idle)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


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
        self._state: _ServerState | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def port(self) -> int:
        if self._state is None:
            raise RuntimeError("the model server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    @property
    def app(self) -> InferenceApp:
        if self._state is None:
            raise RuntimeError("the model server is not started")
        return self._state.app

    def start(self) -> ModelServer:
        """Bind and serve; returns once the socket listens (the model is loaded: a listening server is ready)."""
        if self._state is not None:
            raise RuntimeError("the model server is already started")
        app = InferenceApp(self.model, **self._app_options)
        loop = asyncio.new_event_loop()
        state = _ServerState(app, self._max_request_bytes, loop)
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: _Connection(state), self._host, self._requested_port, reuse_address=True, backlog=128
                    )
                )
            except BaseException as exc:  # handed to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="bayroute-endpoint", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            app.close()
            state.decoder.shutdown()
            raise failure[0]
        assert self._server is not None
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._state = state
        log.info("model endpoint %s serving %s on %s", self.model.model_version, self.model.path, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to ``timeout``), close every connection."""
        state, server, thread = self._state, self._server, self._thread
        if state is None or server is None or thread is None:
            return

        async def shutdown() -> None:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.idle.wait(), timeout)
            for connection in list(state.connections):
                connection.close()  # pending answers are flushed first
            await asyncio.sleep(0)

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), state.loop).result(timeout + 5)
        state.loop.call_soon_threadsafe(state.loop.stop)
        thread.join(timeout=timeout + 5)
        state.decoder.shutdown(wait=True)
        state.app.close()
        self._state = self._server = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
