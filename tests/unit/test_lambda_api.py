from __future__ import annotations

import io
import json
from typing import Any

import pytest

from bayroute.errors import ThresholdNotMet
from bayroute.local.lambda_api import LambdaInvokeMiddleware, LocalFunction, function_name_from_path, invoke


def _echo(event: Any, context: Any) -> dict[str, Any]:
    return {"event": event, "function": context.function_name, "remaining_ms": context.get_remaining_time_in_millis()}


def _below(event: Any, context: Any) -> None:
    raise ThresholdNotMet("too unsure", confidence=0.5)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("bayroute-infer", "bayroute-infer"),
        ("bayroute-infer:live", "bayroute-infer"),
        ("arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Abayroute-infer", "bayroute-infer"),
        ("arn:aws:lambda:us-east-1:123456789012:function:bayroute-infer:3", "bayroute-infer"),
    ],
)
def test_function_names_are_found_in_names_aliases_and_arns(raw: str, name: str) -> None:
    assert function_name_from_path(raw) == name


def test_success_returns_the_handlers_json_and_counts_it() -> None:
    function = LocalFunction("echo", _echo)
    body, failed = invoke(function, b'{"a": 1}')
    answer = json.loads(body)
    assert not failed
    assert answer["event"] == {"a": 1}
    assert answer["function"] == "echo"
    assert 0 < answer["remaining_ms"] <= 30_000
    assert (function.invocations, function.errors) == (1, 0)


def test_an_exception_becomes_the_lambda_error_document_with_the_bare_class_name() -> None:
    function = LocalFunction("below", _below)
    body, failed = invoke(function, b"{}")
    document = json.loads(body)
    assert failed
    assert document["errorType"] == "ThresholdNotMet"
    assert json.loads(document["errorMessage"])["reason"] == "threshold_not_met"
    assert document["stackTrace"]
    assert function.errors == 1


def _call(
    app: LambdaInvokeMiddleware, path: str, body: bytes = b"{}", method: str = "POST"
) -> tuple[str, dict[str, str], bytes]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        captured["status"], captured["headers"] = status, dict(headers)

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    chunks = app(environ, start_response)
    return captured["status"], captured["headers"], b"".join(chunks)


def _moto(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"moto"]


def test_the_middleware_answers_invocations_and_passes_everything_else_to_moto() -> None:
    app = LambdaInvokeMiddleware(_moto, {"below": LocalFunction("below", _below)})

    status, headers, body = _call(app, "/2015-03-31/functions/below/invocations")
    assert status == "200 OK"
    assert headers["X-Amz-Function-Error"] == "Unhandled"
    assert json.loads(body)["errorType"] == "ThresholdNotMet"

    status, headers, _ = _call(app, "/2015-03-31/functions/missing/invocations")
    assert status.startswith("404")
    assert headers["x-amzn-ErrorType"] == "ResourceNotFoundException"

    assert _call(app, "/", method="POST")[2] == b"moto"
    assert _call(app, "/2015-03-31/functions/below/invocations", method="GET")[2] == b"moto"


def test_a_body_that_is_not_json_is_an_invalid_request() -> None:
    body, failed = invoke(LocalFunction("echo", _echo), b"{not json")
    assert failed
    assert json.loads(body)["errorType"] == "InvalidRequestContentException"
