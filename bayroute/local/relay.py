"""Two processes, one AWS: hand a WSGI request to the process that owns its service, over a Unix socket.

The local stack is bound by one interpreter lock: moto answering the AWS calls took about half of it, the
handlers and the Step Functions interpreter most of the rest. So the stack runs in two processes (see
``stack.py``): the AWS process owns the storage and messaging services (S3, SQS, DynamoDB, EventBridge, SNS,
CloudWatch), the workflow process owns Step Functions and the Lambda Invoke API, with the handlers, the
dispatcher and the model endpoint beside them. Each answers its own services and relays the other's requests:
``RoutingApp`` is the WSGI application both put in front of their own, and ``RelayClient``/``RelayServer``
carry a request's WSGI environment and body to the other process and its (status, headers, body) back.

Why not HTTP between them: werkzeug parses every request line and header in Python and closes each
connection, which costs the answering process about as much again as a cheap AWS call. A frame here is a
length and a pickle of plain strings over a kept-alive socket, one per calling thread.
"""

from __future__ import annotations

import functools
import io
import pickle
import re
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from bayroute.local.fastpath import WsgiApp, call_app

Answer = tuple[int, list[tuple[str, str]], bytes]

_LENGTH = struct.Struct("!I")
# A relayed body is an API request or answer: the largest the stack takes is an S3 object below the inbox's
# own size limit, far under this. A frame above it is a broken peer, not a request.
MAX_FRAME_BYTES = 256 * 1024 * 1024
_FIRST_READ_BYTES = 64 * 1024  # a frame's first read: most requests and answers fit whole
_CLOSED = "the other process of the local stack closed the connection"

# Requests for the workflow process: Step Functions (JSON protocol, named by its target header) and the
# Lambda API (signed for the service "lambda"; an unsigned request by its path, which starts with the API's
# version). moto's admin API is the whole server's: both take it.
_WORKFLOW_TARGET_PREFIX = "AWSStepFunctions."
_WORKFLOW_SIGNED_SERVICES = frozenset({"lambda", "states"})
_LAMBDA_PATH_PREFIX = "/2015-03-31/"
_ADMIN_PATH_PREFIX = "/moto-api/"
_SIGNED_SERVICE = re.compile(r"Credential=[^/,]+/[^/,]+/[^/,]+/([^/,]+)/aws4_request")


class RelayError(ConnectionError):
    """The other process of the local stack closed the connection or sent a broken frame."""


def is_workflow_request(environ: dict[str, Any]) -> bool:
    """Whether a request belongs to the workflow process (Step Functions, Lambda) rather than the AWS process."""
    if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith(_WORKFLOW_TARGET_PREFIX):
        return True
    signed = _SIGNED_SERVICE.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    if signed is not None:  # a bucket may be named like the Lambda API's version: the signature says which
        return signed.group(1) in _WORKFLOW_SIGNED_SERVICES
    return str(environ.get("PATH_INFO", "")).startswith(_LAMBDA_PATH_PREFIX)


def is_admin_request(environ: dict[str, Any]) -> bool:
    return str(environ.get("PATH_INFO", "")).startswith(_ADMIN_PATH_PREFIX)


def _send_frame(connection: socket.socket, payload: bytes) -> None:
    connection.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = connection.recv_into(view[received:], size - received)
        if count == 0:
            raise RelayError(_CLOSED)
        received += count
    return bytes(buffer)


def _receive_frame(connection: socket.socket) -> bytes:
    """One frame, read in one call where it arrived whole (nearly always).

    Every read lets the process's other threads take the GIL, and getting it back waits for one of them to let go
    (up to the switch interval, 5 ms): under load, a length prefix read apart from its body cost a call about that
    much again. Each side has one frame in flight per connection, so a read never takes bytes of the next one.
    """
    head = connection.recv(_FIRST_READ_BYTES)
    if not head:
        raise RelayError(_CLOSED)
    if len(head) < _LENGTH.size:
        head += _receive_exactly(connection, _LENGTH.size - len(head))
    (size,) = _LENGTH.unpack_from(head)
    if size > MAX_FRAME_BYTES:
        raise RelayError(f"a relayed frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    body = head[_LENGTH.size :]
    if len(body) > size:
        raise RelayError(f"the other process of the local stack sent {len(body) - size} bytes past a frame")
    if len(body) < size:
        body += _receive_exactly(connection, size - len(body))
    return body


def _request_body(environ: dict[str, Any]) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if environ.get("wsgi.input_terminated"):  # werkzeug has de-chunked it and marks the end itself
        return bytes(stream.read())
    length = str(environ.get("CONTENT_LENGTH") or "0")
    return bytes(stream.read(int(length))) if length.isdigit() and int(length) > 0 else b""


def _portable(environ: dict[str, Any]) -> dict[str, Any]:
    """The part of a WSGI environment that describes the request (the server's own objects left out)."""
    return {
        key: value
        for key, value in environ.items()
        if isinstance(value, str | int | dict) and not key.startswith(("wsgi.", "werkzeug."))
    }


class RelayClient:
    """Sends WSGI requests to a ``RelayServer`` at a Unix socket path; one kept-alive connection per thread."""

    def __init__(self, path: str, timeout_seconds: float = 120.0) -> None:
        self.path = path
        self._timeout = timeout_seconds
        self._local = threading.local()

    def _connection(self) -> socket.socket:
        connection: socket.socket | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(self._timeout)
            try:
                connection.connect(self.path)
            except OSError as exc:
                connection.close()
                raise RelayError(f"cannot reach the other process of the local stack at {self.path}: {exc}") from exc
            self._local.connection = connection
        return connection

    def call(self, environ: dict[str, Any]) -> Answer:
        """Relay one request; the answer is what the other process's application answered."""
        payload = pickle.dumps((_portable(environ), _request_body(environ)), protocol=pickle.HIGHEST_PROTOCOL)
        connection = self._connection()
        try:
            _send_frame(connection, payload)
            status, headers, body = pickle.loads(_receive_frame(connection))
        except (OSError, RelayError):
            # Never resent: the other side may have acted on it (a put, a send). The caller sees a
            # connection error, as botocore reports a dropped connection.
            self.close_connection()
            raise
        return int(status), list(headers), bytes(body)

    def close_connection(self) -> None:
        connection: socket.socket | None = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()


class RoutingApp:
    """The WSGI application in front of one process of the stack: its own services here, the others relayed.

    moto's admin API (``/moto-api/``: reset, configuration) goes to both, so that a reset empties every
    backend; the answer is this process's.
    """

    def __init__(self, local: WsgiApp, remote: RelayClient, is_local: Callable[[dict[str, Any]], bool]) -> None:
        self.local = local
        self.remote = remote
        self._is_local = is_local

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if is_admin_request(environ):
            body = _request_body(environ)
            self.remote.call({**environ, "wsgi.input": io.BytesIO(body)})
            environ["wsgi.input"] = io.BytesIO(body)
            return self.local(environ, start_response)
        if self._is_local(environ):
            return self.local(environ, start_response)
        status, headers, body = self.remote.call(environ)
        start_response(f"{status} {_reason(status)}", headers)
        return [body]


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class RelayServer:
    """Answers ``RelayClient`` requests with ``app`` at a Unix socket path, a thread per connection."""

    def __init__(self, path: str, app: WsgiApp) -> None:
        self.path = path
        self.app = app
        relay = self

        class _Connection(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._serve(self.request)

        self._server = socketserver.ThreadingUnixStreamServer(path, _Connection)
        self._server.daemon_threads = True
        # A short poll, so that stopping the stack does not wait half a second for the loop to notice.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        self._thread = threading.Thread(target=serve, name=f"relay:{path}", daemon=True)

    def start(self) -> RelayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _serve(self, connection: socket.socket) -> None:
        while True:
            try:
                request = _receive_frame(connection)
            except (OSError, RelayError):
                return
            described, body = pickle.loads(request)
            environ = {**described, "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr}
            environ.update(_WSGI_CONSTANTS)
            answer = call_app(self.app, environ)
            try:
                _send_frame(connection, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                return


_WSGI_CONSTANTS: dict[str, Any] = {
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}
