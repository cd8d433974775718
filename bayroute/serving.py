"""The SageMaker inference container contract, without a transport: what the endpoint answers, and the helpers
its clients share to read those answers (custom attributes, media types).

``bayroute.endpoint_server`` serves it over HTTP; the infer function's in-process backend calls
``InferenceApp.invoke`` directly, without importing the server's asyncio transport.

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
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import string
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import numpy as np

from bayroute.errors import WorkflowError
from bayroute.imaging import DEFAULT_MAX_PIXELS, decode_png_payload

if TYPE_CHECKING:  # the contract helpers are used where ONNX Runtime is not installed
    from bayroute.model.onnx_model import OnnxClassifier

log = logging.getLogger(__name__)

# The server's batches hold at most this many images (a bigger npy batch request runs alone).
DEFAULT_MAX_BATCH = 64


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def server_model_threads(cores: int | None = None, workers: int = 1) -> int:
    """ONNX Runtime intra-op threads for each server process's model: its share of the cores but one, at least one.

    Each server process runs its model on its event-loop thread, between its HTTP and decoding work, so the
    loop thread is already one of the model's threads; an intra-op pool beside it spins against the loop.
    Measured on 2 cores at concurrency 16, one server process (batching on, four alternating rounds): one
    model thread served 1,522-1,777 images/s (p99 11.8-13.4 ms), two threads 882-1,991 (p99 11.8-37.6 ms).
    """
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, workers) - 1)


def server_workers(environ: Mapping[str, str] | None = None) -> int:
    """How many server processes ``bayroute serve`` runs by default: one per usable core.

    ``SAGEMAKER_MODEL_SERVER_WORKERS``, the variable SageMaker's own model servers read, overrides it. One
    process is bound by its GIL to about one core; on 2 cores, two processes served 20-24% more images/s
    than one with the model, 40% more with a model that costs nothing (``endpoint_workers``).
    """
    value = (os.environ if environ is None else environ).get(WORKERS_VARIABLE, "").strip()
    if not value:
        return usable_cores()
    try:
        workers = int(value)
    except ValueError:
        raise ValueError(f"{WORKERS_VARIABLE} must be a whole number of processes, got {value!r}") from None
    if workers < 1:
        raise ValueError(f"{WORKERS_VARIABLE} must be at least 1, got {workers}")
    return workers


WORKERS_VARIABLE = "SAGEMAKER_MODEL_SERVER_WORKERS"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
NPY_CONTENT_TYPE = "application/x-npy"
JSON_CONTENT_TYPE = "application/json"
IMAGE_CONTENT_TYPES = frozenset({"application/x-image"})  # plus every image/* type
LABEL_SEPARATOR = "|"
# SageMaker forwards at most 1024 visible ASCII characters of custom attributes.
MAX_CUSTOM_ATTRIBUTES_CHARS = 1024


_ALWAYS_SAFE = frozenset(string.ascii_letters + string.digits + "_.-~")


def percent_encode(text: str, safe: str = "") -> str:
    """``urllib.parse.quote(text, safe=safe)``, in half its time on ASCII text: batch scoring encodes two values
    per image, and ``quote`` looks up every byte from Python, where this replaces each distinct unsafe character
    once."""
    if not text.isascii():
        return urllib.parse.quote(text, safe=safe)
    unsafe = set(text).difference(_ALWAYS_SAFE, safe)
    if "%" in unsafe:  # first, so that the escapes added below are not escaped again
        text = text.replace("%", "%25")
        unsafe.discard("%")
    for character in unsafe:
        text = text.replace(character, f"%{ord(character):02X}")
    return text


def format_custom_attributes(model_version: str, labels: Sequence[str]) -> str:
    """``model_version=<v>,labels=<a>|<b>``: values percent-encoded so ``,``, ``=`` and ``|`` stay separators."""
    return _format_custom_attributes(model_version, tuple(labels))


@functools.lru_cache(maxsize=16)  # one model's attributes, asked for by every inference it makes
def _format_custom_attributes(model_version: str, labels: tuple[str, ...]) -> str:
    safe = "-._~:/+"
    encoded_labels = LABEL_SEPARATOR.join(percent_encode(label, safe) for label in labels)
    value = f"model_version={percent_encode(model_version, safe)},labels={encoded_labels}"
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


def error_answer(status: HTTPStatus, reason: str, detail: str) -> InvocationAnswer:
    return InvocationAnswer(int(status), json.dumps({"error": reason, "detail": detail}).encode("utf-8"))


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
    ``predict`` (its own batches of prepared requests), then ``answer``.
    """

    def __init__(self, model: OnnxClassifier, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self.custom_attributes = format_custom_attributes(model.model_version, model.labels)
        self._answer_headers = {CUSTOM_ATTRIBUTES_HEADER: self.custom_attributes}

    def ping(self) -> InvocationAnswer:
        body = {"status": "healthy", "model_version": self.model.model_version}
        return InvocationAnswer(int(HTTPStatus.OK), json.dumps(body).encode("utf-8"))

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None) -> InvocationAnswer:
        prepared = self.prepare(body, content_type, accept)
        if isinstance(prepared, InvocationAnswer):
            return prepared
        try:
            probabilities = self.predict(prepared.images)
        except Exception as exc:  # ORT failures carry their own types; the caller only needs "the model failed"
            return self.model_failure(prepared, exc)
        return self.answer(prepared, probabilities)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The model's probabilities for ``images``: one row per image, else ValueError (an answer would be
        missing, or would be another image's)."""
        probabilities = self.model.predict(images)
        if len(probabilities) != len(images):
            raise ValueError(f"the model answered {len(probabilities)} rows for {len(images)} images")
        return probabilities

    def prepare(self, body: bytes, content_type: str | None, accept: str | None) -> PreparedRequest | InvocationAnswer:
        """The decoded request, or the error answer (415, 406, 400) that stops it before the model."""
        media = media_type(content_type)
        is_array = media == NPY_CONTENT_TYPE
        if not (is_array or media in IMAGE_CONTENT_TYPES or media.startswith("image/")):
            return error_answer(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                f"content type {content_type!r} is not accepted; send image/png, image/jpeg, "
                f"application/x-image or {NPY_CONTENT_TYPE}",
            )
        verbose = _verbose_json(accept)
        if verbose is None:
            return error_answer(HTTPStatus.NOT_ACCEPTABLE, "not_acceptable", f"cannot answer {accept!r}; only JSON")
        try:
            images, is_batch = self._array(body) if is_array else (self._image(body), False)
        except WorkflowError as exc:
            return error_answer(HTTPStatus.BAD_REQUEST, exc.reason, exc.detail)
        except _BadArray as exc:
            return error_answer(HTTPStatus.BAD_REQUEST, "invalid_array", str(exc))
        return PreparedRequest(images, is_batch, verbose, media, len(body))

    def answer(self, prepared: PreparedRequest, probabilities: np.ndarray) -> InvocationAnswer:
        rows = probabilities.tolist()
        result: Any = rows if prepared.is_batch else rows[0]
        if prepared.verbose:
            result = {"labels": self.model.labels, "probabilities": result, "model_version": self.model.model_version}
        return InvocationAnswer(int(HTTPStatus.OK), json.dumps(result).encode("utf-8"), headers=self._answer_headers)

    def model_failure(self, prepared: PreparedRequest, exc: BaseException) -> InvocationAnswer:
        log.error("model failure on a %s request of %d bytes", prepared.media, prepared.body_bytes, exc_info=exc)
        return error_answer(HTTPStatus.INTERNAL_SERVER_ERROR, "model_error", f"{type(exc).__name__}: {exc}")

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
