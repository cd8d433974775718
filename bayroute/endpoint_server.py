"""The model endpoint: an HTTP server speaking the SageMaker inference container contract.

The same server runs locally (the embedded stack, ``bayroute serve``) and in the SageMaker
bring-your-own-container image (``infra/endpoint``): SageMaker sends ``GET /ping`` and
``POST /invocations`` to port 8080.

The contract (``GET /ping``, ``POST /invocations``, custom attributes, errors) is ``bayroute.serving``.

Transport: HTTP/1.1 with keep-alive (``Connection: close`` and HTTP/1.0 without keep-alive are honoured,
``Expect: 100-continue`` is answered), an asyncio server on one event-loop thread. That thread parses
requests, decodes the small images (big bodies are decoded on a worker thread, so one photo does not hold up
the others) and runs the model: the requests decoded in one turn of the loop wait for the next turn, then run
as one ONNX Runtime batch (``batching`` on) or one after another (off). Under load, requests pile up while
the model runs, so batches grow with concurrency; a request that finds the loop idle runs at once. The model
runs on the loop thread, not behind a queue on model threads, because handing each request to another thread
and back cost more than it saved: with one server process per core (``endpoint_workers``) at concurrency 16,
batches formed on the loop served 2,762-3,079 images/s (p99 7.9-10.6 ms, 0.67-0.73 ms of CPU per answer)
where a gathering thread and model threads served 1,990-2,464 (p99 12.8-15.3 ms, 0.81-1.01 ms), six
alternating rounds. A connection closed after an error answer is half-closed first and drained briefly, so
the client reads the answer instead of a reset. ``stop()`` stops accepting, lets requests in progress
finish, then closes every connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from bayroute.imaging import DEFAULT_MAX_PIXELS
from bayroute.serving import (
    DEFAULT_MAX_BATCH,
    NPY_CONTENT_TYPE,
    InferenceApp,
    InvocationAnswer,
    PreparedRequest,
    error_answer,
    media_type,
)

if TYPE_CHECKING:
    from bayroute.model.onnx_model import OnnxClassifier

log = logging.getLogger(__name__)

# Idle keep-alive connections are closed after this; SageMaker and our clients reconnect transparently.
IDLE_CONNECTION_SECONDS = 60.0
# A request head (request line and headers) longer than this is refused (431) and the connection closed.
MAX_HEAD_BYTES = 64 * 1024
# Bodies up to this size are decoded on the event loop (a 32x32 PNG takes a fraction of a millisecond); bigger
# ones (photos) on a worker thread, so that they do not hold up the other connections.
INLINE_DECODE_BYTES = 64 * 1024
# After an answer that closes the connection, unread request bytes are drained for at most this long.
LINGER_SECONDS = 1.0


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


def endpoint_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches a server bound to ``host:port`` at (all interfaces: loopback)."""
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}"


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


@dataclass(frozen=True)
class ModelCalls:
    """How often a server ran its model, and on how many images in all."""

    runs: int
    images: int


@dataclass
class _Decoded:
    """A request decoded and waiting for the model's next turn."""

    connection: _Connection
    request: _Request
    prepared: PreparedRequest


class _ServerState:
    """What the connections of one server share: the app, limits, open connections, requests in flight, and the
    decoded requests waiting for the model."""

    def __init__(
        self,
        app: InferenceApp,
        max_request_bytes: int,
        loop: asyncio.AbstractEventLoop,
        *,
        batching: bool,
        max_batch: int,
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.loop = loop
        self.batching = batching
        self.max_batch = max_batch
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.decoder = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="bayroute-decode")
        self.waiting: list[_Decoded] = []
        self.model_runs = 0
        self.model_images = 0

    def started(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def wait_for_model(self, decoded: _Decoded) -> None:
        """Queue a decoded request for the model's next turn (scheduled by the first request to wait)."""
        self.waiting.append(decoded)
        if len(self.waiting) == 1:
            self.loop.call_soon(self.run_model)

    def run_model(self) -> None:
        """Answer every waiting request: in batches of up to ``max_batch`` images, or one by one."""
        waiting, self.waiting = self.waiting, []
        group: list[_Decoded] = []
        images = 0
        for decoded in waiting:
            count = len(decoded.prepared.images)
            if group and (not self.batching or images + count > self.max_batch):
                self._run(group)
                group, images = [], 0
            group.append(decoded)
            images += count
        if group:
            self._run(group)

    def _run(self, group: list[_Decoded]) -> None:
        app = self.app
        try:
            if len(group) == 1:
                batch = group[0].prepared.images
            else:
                batch = np.concatenate([decoded.prepared.images for decoded in group])
            probabilities = app.predict(batch)
        except Exception as exc:  # ORT failures carry their own types; each client only needs "the model failed"
            for decoded in group:
                decoded.connection.answered(decoded.request, app.model_failure(decoded.prepared, exc))
            return
        self.model_runs += 1
        self.model_images += len(batch)
        offset = 0
        for decoded in group:
            count = len(decoded.prepared.images)
            answer = app.answer(decoded.prepared, probabilities[offset : offset + count])
            decoded.connection.answered(decoded.request, answer)
            offset += count


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
                self._final(
                    error_answer(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "bad_request", "request head too long")
                )
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._final(
                error_answer(HTTPStatus.BAD_REQUEST, "bad_request", f"not an HTTP/1.x request line: {lines[0][:80]!r}")
            )
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._final(error_answer(HTTPStatus.BAD_REQUEST, "bad_request", f"malformed header line {line[:80]!r}"))
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
                self._write(error_answer(HTTPStatus.NOT_FOUND, "not_found", f"no route for GET {request.path}"), False)
            return False
        if request.method != "POST" or request.path != "/invocations":
            self._final(
                error_answer(HTTPStatus.NOT_FOUND, "not_found", f"no route for {request.method} {request.path}")
            )
            return False
        headers = request.headers
        if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" not in headers:
            self._final(
                error_answer(HTTPStatus.LENGTH_REQUIRED, "length_required", "send the body with Content-Length")
            )
            return False
        try:
            length = int(headers["content-length"])
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._final(error_answer(HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length is not a byte count"))
            return False
        limit = self._state.max_request_bytes
        if length > limit:
            detail = f"the body has {length} bytes, over the limit of {limit}"
            self._final(error_answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", detail))
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
            self.answered(request, prepared)
            return
        self._state.wait_for_model(_Decoded(self, request, prepared))

    def answered(self, request: _Request, answer: InvocationAnswer) -> None:
        """Write ``answer`` to ``request`` (the server's model turn calls this too), then read the next request."""
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
            return error_answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", f"{type(exc).__name__}: {exc}")

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
        batching: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        reuse_port: bool = False,
    ) -> None:
        self.model = model
        self._host = host
        self._requested_port = port
        self._reuse_port = reuse_port  # SO_REUSEPORT: other processes serve the same port (``endpoint_workers``)
        self._max_request_bytes = max_request_bytes
        self._max_pixels = max_pixels
        self._batching = batching
        self._max_batch = max_batch
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
        return endpoint_url(self._host, self.port)

    @property
    def model_calls(self) -> ModelCalls:
        """How often the model ran so far, and on how many images (fewer runs than images: shared batches)."""
        if self._state is None:
            raise RuntimeError("the model server is not started")
        return ModelCalls(self._state.model_runs, self._state.model_images)

    def start(self) -> ModelServer:
        """Bind and serve; returns once the socket listens (the model is loaded: a listening server is ready)."""
        if self._state is not None:
            raise RuntimeError("the model server is already started")
        app = InferenceApp(self.model, max_pixels=self._max_pixels)
        loop = asyncio.new_event_loop()
        state = _ServerState(app, self._max_request_bytes, loop, batching=self._batching, max_batch=self._max_batch)
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: _Connection(state),
                        self._host,
                        self._requested_port,
                        reuse_address=True,
                        reuse_port=self._reuse_port or None,
                        backlog=128,
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
        self._state = self._server = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
