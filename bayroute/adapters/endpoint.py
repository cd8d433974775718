"""The infer step's view of the model: one interface, three backends, one error mapping.

``InferenceEndpoint.invoke(body, content_type)`` sends one image (the serialized PNG payload) with the
SageMaker runtime contract and returns a validated ``EndpointAnswer``. Backends:

- ``HttpEndpoint``: our endpoint server over HTTP (the local stack, or any host speaking the contract);
  one keep-alive connection per thread, silently re-opened when the server has closed an idle one;
- ``SageMakerEndpoint``: ``sagemaker-runtime`` ``InvokeEndpoint`` on a deployed endpoint;
- ``InProcessEndpoint``: the ONNX model inside the calling process (the infer Lambda without an
  endpoint), through the very same request handling as the server.

Every failure becomes a named workflow error, the same for every backend:

=====================================================  =======================
no connection, reset, timeout, HTTP 5xx                ``EndpointUnavailable`` (transient: retried)
HTTP 429, ``ThrottlingException``, model not ready     ``EndpointThrottled`` (transient: retried)
other HTTP 4xx, ``ValidationError``, ``ModelError``    ``ModelError``
an answer that breaks the contract (below)             ``ModelError``
=====================================================  =======================

SageMaker reports any non-200 answer of the container as ``ModelError`` with the container's
``OriginalStatusCode``; that code is mapped like the HTTP status above, so a container that answers 503
is "unavailable" whichever way it is reached.

A valid answer is a JSON list of finite numbers in [0, 1] summing to 1 (within 1e-3), or the verbose
object ``{"probabilities", "labels", "model_version"}``, with as many probabilities as labels, and a
model version (from the ``CustomAttributes`` or the verbose body).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bayroute.config import Settings
from bayroute.errors import EndpointThrottled, EndpointUnavailable, ModelError
from bayroute.imaging import DEFAULT_MAX_PIXELS
from bayroute.serving import (
    CUSTOM_ATTRIBUTES_HEADER,
    JSON_CONTENT_TYPE,
    InferenceApp,
    labels_from_custom_attributes,
    media_type,
    model_version_from_custom_attributes,
    parse_custom_attributes,
)

if TYPE_CHECKING:  # ONNX Runtime is loaded only by the in-process backend
    from bayroute.model.onnx_model import OnnxClassifier

SUM_TOLERANCE = 1e-3
_ERROR_BODY_CHARS = 300
# SageMaker runtime errors that mean "try again later" rather than "this request is wrong".
_SAGEMAKER_UNAVAILABLE = {"InternalFailure", "ServiceUnavailable", "InternalDependencyException"}
_SAGEMAKER_THROTTLED = {"ThrottlingException", "ModelNotReadyException", "TooManyRequestsException"}


@dataclass(frozen=True)
class EndpointAnswer:
    probabilities: list[float]
    labels: list[str] | None
    model_version: str
    raw_body: bytes
    content_type: str  # of the answer
    latency_ms: float


class InferenceEndpoint(Protocol):
    def invoke(self, body: bytes, content_type: str, *, inference_id: str | None = None) -> EndpointAnswer:
        """Classify one image; ``inference_id`` is passed to backends that record it (SageMaker data capture)."""
        ...


def parse_answer(
    body: bytes, content_type: str | None, custom_attributes: str | None, *, latency_ms: float, source: str
) -> EndpointAnswer:
    """Validate a 200 answer against the contract; ModelError (naming ``source``) when it breaks it."""
    pairs = parse_custom_attributes(custom_attributes)
    labels = labels_from_custom_attributes(pairs)
    model_version = model_version_from_custom_attributes(pairs)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{source} answered something that is not JSON: {body[:80]!r}", source=source) from exc
    if isinstance(document, dict):
        raw_probabilities = document.get("probabilities")
        labels = document.get("labels", labels)
        model_version = document.get("model_version", model_version)
    else:
        raw_probabilities = document
    probabilities = _probabilities(raw_probabilities, source)
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ModelError(f"{source} answered malformed labels: {str(labels)[:80]}", source=source)
        if len(labels) != len(probabilities):
            raise ModelError(
                f"{source} answered {len(probabilities)} probabilities for {len(labels)} labels",
                source=source,
            )
    if not isinstance(model_version, str) or not model_version:
        raise ModelError(f"{source} answered without a model version ({CUSTOM_ATTRIBUTES_HEADER})", source=source)
    return EndpointAnswer(
        probabilities=probabilities,
        labels=labels,
        model_version=model_version,
        raw_body=body,
        content_type=content_type or JSON_CONTENT_TYPE,
        latency_ms=latency_ms,
    )


def _probabilities(value: Any, source: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ModelError(f"{source} answered no list of probabilities: {str(value)[:80]}", source=source)
    if not all(isinstance(p, int | float) and not isinstance(p, bool) for p in value):
        raise ModelError(f"{source} answered non-numeric probabilities: {str(value)[:80]}", source=source)
    probabilities = [float(p) for p in value]
    if not all(math.isfinite(p) and -SUM_TOLERANCE <= p <= 1.0 + SUM_TOLERANCE for p in probabilities):
        raise ModelError(f"{source} answered probabilities outside [0, 1]: {probabilities}", source=source)
    if abs(sum(probabilities) - 1.0) > SUM_TOLERANCE:
        raise ModelError(f"{source} answered probabilities summing to {sum(probabilities):.6f}", source=source)
    return probabilities


def raise_for_status(status: int, body: bytes, source: str) -> None:
    """The workflow error for a non-200 answer: 429 throttled, 5xx unavailable, other codes a model error."""
    if status == 200:
        return
    reason, detail = _error_document(body)
    facts: dict[str, Any] = {"status": status, "source": source}
    if reason:
        facts["endpoint_reason"] = reason
    message = f"{source} answered HTTP {status}" + (f" ({reason}: {detail})" if reason else f": {detail}")
    if status == 429:
        raise EndpointThrottled(message, **facts)
    if status >= 500:
        raise EndpointUnavailable(message, **facts)
    raise ModelError(message, **facts)


def _error_document(body: bytes) -> tuple[str | None, str]:
    """(reason, detail) of our server's JSON error body, or (None, the body's start) for anything else."""
    text = body[:_ERROR_BODY_CHARS].decode("utf-8", errors="replace")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, text
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return document["error"], str(document.get("detail", ""))[:_ERROR_BODY_CHARS]
    return None, text


class HttpEndpoint:
    """``POST {url}/invocations`` over a keep-alive connection per thread (thread-safe)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"endpoint URL must be http(s)://host[:port][/path], got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._path = parsed.path.rstrip("/") + "/invocations"
        self._local = threading.local()

    def invoke(self, body: bytes, content_type: str, *, inference_id: str | None = None) -> EndpointAnswer:
        headers = {"Content-Type": content_type, "Accept": JSON_CONTENT_TYPE}
        started = time.perf_counter()
        status, answer_headers, data = self._exchange(body, headers)
        latency_ms = (time.perf_counter() - started) * 1000.0
        raise_for_status(status, data, self.url)
        return parse_answer(
            data,
            answer_headers.get("content-type"),
            answer_headers.get(CUSTOM_ATTRIBUTES_HEADER.lower()),
            latency_ms=latency_ms,
            source=self.url,
        )

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                connection.request("POST", self._path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except TimeoutError as exc:
                self.close()
                raise EndpointUnavailable(f"{self.url} did not answer within {self.timeout}s", source=self.url) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server had closed this idle keep-alive connection: one fresh try
                raise EndpointUnavailable(
                    f"cannot reach {self.url}: {type(exc).__name__}: {exc}", source=self.url
                ) from exc
            if response.will_close:
                self.close()
            return response.status, {name.lower(): value for name, value in response.getheaders()}, data
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self.timeout)
        self._local.connection = connection
        return connection, False


class SageMakerEndpoint:
    """``InvokeEndpoint`` on a deployed SageMaker endpoint (the container in ``infra/endpoint``)."""

    def __init__(
        self, endpoint_name: str, client: Any = None, *, timeout: float = 5.0, target_variant: str | None = None
    ) -> None:
        self.endpoint_name = endpoint_name
        self.target_variant = target_variant
        if client is None:
            import boto3
            from botocore.config import Config

            # The workflow retries with backoff (ASL Retry); hidden client retries would multiply its attempts.
            config = Config(
                connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "total_max_attempts": 1}
            )
            client = boto3.client("sagemaker-runtime", config=config)
        self._client = client

    def invoke(self, body: bytes, content_type: str, *, inference_id: str | None = None) -> EndpointAnswer:
        from botocore.exceptions import BotoCoreError, ClientError

        source = f"SageMaker endpoint {self.endpoint_name}"
        request: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "Body": body,
            "ContentType": content_type,
            "Accept": JSON_CONTENT_TYPE,
        }
        if inference_id:
            request["InferenceId"] = inference_id
        if self.target_variant:
            request["TargetVariant"] = self.target_variant
        started = time.perf_counter()
        try:
            response = self._client.invoke_endpoint(**request)
            data = response["Body"].read()
        except ClientError as exc:
            raise _sagemaker_error(exc, source) from exc
        except BotoCoreError as exc:  # connection refused or reset, timeouts: nothing answered
            raise EndpointUnavailable(f"cannot reach {source}: {type(exc).__name__}: {exc}", source=source) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        return parse_answer(
            data, response.get("ContentType"), response.get("CustomAttributes"), latency_ms=latency_ms, source=source
        )


def _sagemaker_error(exc: Any, source: str) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = f"{source}: {code}: {error.get('Message', exc)}"
    facts: dict[str, Any] = {"source": source, "error_code": code}
    if code == "ModelError":
        original = exc.response.get("OriginalStatusCode")
        if isinstance(original, int):
            facts["status"] = original
            if original == 429:
                return EndpointThrottled(message, **facts)
            if original >= 500:
                return EndpointUnavailable(message, **facts)
        return ModelError(message, **facts)
    if code in _SAGEMAKER_THROTTLED:
        return EndpointThrottled(message, **facts)
    if code in _SAGEMAKER_UNAVAILABLE:
        return EndpointUnavailable(message, **facts)
    return ModelError(message, **facts)


class InProcessEndpoint:
    """The model in this process, behind the same request handling as the endpoint server."""

    def __init__(self, model: OnnxClassifier, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.model = model
        self._app = InferenceApp(model, max_pixels=max_pixels)
        self._source = f"in-process model {model.model_version}"

    def invoke(self, body: bytes, content_type: str, *, inference_id: str | None = None) -> EndpointAnswer:
        started = time.perf_counter()
        answer = self._app.invoke(body, content_type, JSON_CONTENT_TYPE)
        latency_ms = (time.perf_counter() - started) * 1000.0
        raise_for_status(answer.status, answer.body, self._source)
        return parse_answer(
            answer.body,
            media_type(answer.content_type),
            answer.headers.get(CUSTOM_ATTRIBUTES_HEADER),
            latency_ms=latency_ms,
            source=self._source,
        )


def endpoint_from_settings(settings: Settings, *, sagemaker_client: Any = None) -> InferenceEndpoint:
    """The backend that ``settings.inference_backend`` names: ``http``, ``sagemaker`` or ``lambda`` (in-process)."""
    backend = settings.inference_backend
    if backend == "http":
        return HttpEndpoint(settings.endpoint_url, settings.endpoint_timeout_seconds)
    if backend == "sagemaker":
        return SageMakerEndpoint(
            settings.names.endpoint_name, sagemaker_client, timeout=settings.endpoint_timeout_seconds
        )
    if backend == "lambda":
        from bayroute.model.onnx_model import OnnxClassifier

        return InProcessEndpoint(OnnxClassifier(settings.model_path), max_pixels=settings.limits.max_image_pixels)
    raise ValueError(f"unknown inference backend {backend!r}; expected http, sagemaker or lambda")
