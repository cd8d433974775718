"""A local implementation of the Lambda Invoke API, in front of moto's server.

moto runs Lambda functions only in Docker, so the local runtime answers
``POST /2015-03-31/functions/{name}/invocations`` itself by calling the in-process handler, exactly as the
Lambda service would answer it: the handler's result as the JSON body, or, when the handler raises, the
error document ``{"errorType", "errorMessage", "stackTrace"}`` with the header ``X-Amz-Function-Error``.
Step Functions (moto's interpreter) then sees the same success, error names and causes as on AWS. Every
other request goes to moto unchanged. This is a WSGI middleware, so it shares moto's port: the
interpreter, which calls ``http://localhost:$MOTO_PORT`` for every service, reaches it without a proxy hop.
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

Handler = Callable[[Any, Any], Any]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations/?$")
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account


@dataclass
class LocalFunction:
    """A handler registered under a function name, with the limits AWS would apply."""

    name: str
    handler: Handler
    timeout_seconds: float = 30.0
    memory_mb: int = 512
    invocations: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def arn(self) -> str:
        return function_arn(self.name)

    def count(self, failed: bool) -> None:
        with self._lock:
            self.invocations += 1
            self.errors += int(failed)


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"


class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, function: LocalFunction) -> None:
        self.function_name = function.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function.arn
        self.memory_limit_in_mb = function.memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function.name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + function.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_name_from_path(raw: str) -> str:
    """``my-fn``, ``my-fn:alias`` or a full (URL-encoded) function ARN → ``my-fn``."""
    name = unquote(raw)
    if name.startswith("arn:"):
        parts = name.split(":")
        return parts[6] if len(parts) > 6 else name
    return name.split(":", 1)[0]


def invoke(function: LocalFunction, payload: bytes) -> tuple[bytes, bool]:
    """Run the handler on a JSON payload: (response body, whether it is a function error)."""
    try:
        event = json.loads(payload) if payload else {}
    except ValueError as exc:
        return _error_document("InvalidRequestContentException", str(exc), []), True
    try:
        result = function.handler(event, LambdaContext(function))
    except Exception as exc:
        function.count(failed=True)
        stack = traceback.format_exception(exc)
        # The bare class name, as the Python runtime reports it: it is the ASL error name.
        return _error_document(type(exc).__name__, str(exc), stack), True
    function.count(failed=False)
    return json.dumps(result).encode("utf-8"), False


def _error_document(error_type: str, message: str, stack: list[str]) -> bytes:
    return json.dumps({"errorType": error_type, "errorMessage": message, "stackTrace": stack}).encode("utf-8")


class LambdaInvokeMiddleware:
    """WSGI middleware: Lambda Invoke requests for registered functions → handler; the rest → ``app``."""

    def __init__(self, app: WsgiApp, functions: Mapping[str, LocalFunction]) -> None:
        self._app = app
        self._functions = dict(functions)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        match = INVOKE_PATH.match(environ.get("PATH_INFO", ""))
        if environ.get("REQUEST_METHOD") != "POST" or match is None:
            return self._app(environ, start_response)
        name = function_name_from_path(match["name"])
        function = self._functions.get(name)
        if function is None:
            body = json.dumps({"Type": "User", "message": f"Function not found: {name}"}).encode()
            start_response(
                "404 Not Found",
                [("Content-Type", "application/json"), ("x-amzn-ErrorType", "ResourceNotFoundException")],
            )
            return [body]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        payload = environ["wsgi.input"].read(length) if length else b""
        invocation_type = environ.get("HTTP_X_AMZ_INVOCATION_TYPE", "RequestResponse")
        if invocation_type == "DryRun":
            start_response("204 No Content", [])
            return [b""]
        if invocation_type == "Event":
            threading.Thread(target=invoke, args=(function, payload), daemon=True).start()
            start_response("202 Accepted", [])
            return [b""]
        body, failed = invoke(function, payload)
        headers = [
            ("Content-Type", "application/json"),
            ("X-Amz-Executed-Version", "$LATEST"),
            ("Content-Length", str(len(body))),
        ]
        if failed:
            headers.append(("X-Amz-Function-Error", "Unhandled"))
        start_response("200 OK", headers)
        return [body]
