"""S3's object calls without botocore: each request signed here (Signature Version 4) and sent with ``http.client``.

The functions' S3 calls are single-object reads and writes (GetObject, HeadObject, PutObject), and botocore's
client does much more per call than they need: measured side by side against moto's S3 answered in the same
process, a PutObject cost 3.9 ms of CPU through botocore's client and 1.7 ms through this one, server included.
Every image makes four such calls in ingest, serialize and threshold, and infer's only S3 call on the way to its
first answer is the capture record's PutObject: importing botocore's client machinery and building an S3 client
cost infer about 0.4 s of its cold start, more than the whole 250 ms goal. So these calls are made here, and
botocore is left to everything else.

Where callers can see it, this behaves as botocore's client does:

- it is chosen only where botocore would take its credentials from the environment (a Lambda function's role,
  the local stack) and would use the plain regional S3 endpoint or ``AWS_ENDPOINT_URL``
  (:func:`signed_s3_from_environment`); anything else (a profile, SSO, FIPS or dual-stack endpoints, an
  S3-only endpoint) gets botocore's client;
- it takes botocore's parameter names and answers the keys of botocore's answer that callers read; a GET's body
  is read from the open connection, as botocore's ``StreamingBody`` is, so a caller that stops at a size limit
  never holds more of an object than it read;
- it fails with botocore's own exceptions (``ClientError`` carrying S3's error code and status,
  ``EndpointConnectionError``, ``ConnectionClosedError``, ``ReadTimeoutError``): the names the workflow's Retry
  matches;
- it retries as :func:`bayroute.adapters.aws.aws_client` configures botocore: one attempt against an endpoint
  override (moto reports its own failures as HTTP 500, and a retry would repeat them), otherwise botocore's
  standard mode: up to 3 attempts, on connection errors, 5xx answers and throttling, after a jittered
  exponential backoff (at most 20 s).

The signatures are checked against botocore's own ``s3v4`` signer in the tests, and the answers against
botocore's client on moto's S3.
"""

from __future__ import annotations

import hashlib
import hmac
import http
import http.client
import io
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

STANDARD_ATTEMPTS = 3
BACKOFF_CAP_S = 20.0
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
USER_AGENT = "bayroute-signed-s3/1"  # sent, not signed (botocore does not sign its own either)

# Variables that make botocore choose another endpoint, or another way of addressing S3, than this client knows.
_BOTOCORE_ONLY_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")
_RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "RequestLimitExceeded",
    }
)
# Bucket names that can be a host name label: lower case, digits and hyphens (dots would break the TLS name).
_VIRTUAL_HOST_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]*)</\1>")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None


@dataclass(frozen=True)
class SignedRequest:
    """One request as it goes on the wire (``headers`` include ``Host`` and the signature)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    stream: ResponseBody | None = None  # a streamed success's body, still on its connection (``body`` is empty)


Sender = Callable[[SignedRequest], Reply | None]
# Asked in turn before the network; the first that answers wins. The local stack answers its own origin here, in
# this process, as it answers botocore's requests through botocore's ``before-send`` event.
IN_PROCESS_SENDERS: list[Sender] = []


def signed_s3_from_environment(environ: Mapping[str, str] | None = None) -> SignedS3Client | None:
    """The client for this environment, or None where botocore must decide (see the module's docstring)."""
    env = os.environ if environ is None else environ
    access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key or any(env.get(name) for name in _BOTOCORE_ONLY_VARIABLES):
        return None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint_url = env.get("AWS_ENDPOINT_URL") or None
    if endpoint_url is None and region.startswith("us-iso"):  # partitions with other domains: botocore knows them
        return None
    credentials = Credentials(access_key, secret_key, env.get("AWS_SESSION_TOKEN") or None)
    return SignedS3Client(credentials, region, endpoint_url)


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Credentials,
    region: str,
    when: datetime,
) -> dict[str, str]:
    """``headers`` plus ``Host`` and S3's Signature Version 4 headers.

    Every header given is signed. S3 takes the path as sent (no normalisation, no second encoding), the query's
    parameters sorted and encoded, and the payload's SHA-256 in ``x-amz-content-sha256``.
    """
    parts = urllib.parse.urlsplit(url)
    amz_date = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    signed = {name.lower(): " ".join(str(value).split()) for name, value in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    signed["x-amz-date"] = amz_date
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    canonical_request = "\n".join(
        [
            method,
            parts.path or "/",
            _canonical_query(parts.query),
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            signed["x-amz-content-sha256"],
        ]
    )
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()]
    )
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (amz_date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


def _canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{name}={value}" for name, value in sorted((_encode(n), _encode(v)) for n, v in pairs))


def _encode(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


class ResponseBody:
    """A GET's body, read as botocore's ``StreamingBody`` is: ``read(amt)``, ``close()``, ``with``.

    Over the network it reads from the open response; its connection goes back to the thread's pool when the body
    was read to its end, and is closed when the caller stopped short of it.
    """

    def __init__(
        self, source: http.client.HTTPResponse | io.BytesIO, url: str, release: Callable[[bool], None] | None = None
    ) -> None:
        self._source = source
        self._url = url
        self._release = release

    def read(self, amt: int | None = None) -> bytes:
        try:
            return self._source.read(amt)
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=self._url, error=exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionClosedError(endpoint_url=self._url, error=exc) from exc

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            # http.client closes a response once its last byte is read: only then may the connection carry more.
            release(isinstance(self._source, http.client.HTTPResponse) and self._source.isclosed())
        self._source.close()

    def __enter__(self) -> ResponseBody:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class SignedS3Client:
    """The part of botocore's S3 client that the functions use: ``get_object``, ``head_object``, ``put_object``."""

    def __init__(
        self,
        credentials: Credentials,
        region: str,
        endpoint_url: str | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._credentials = credentials
        self._region = region
        self._endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.attempts = 1 if endpoint_url else STANDARD_ATTEMPTS
        self._clock = clock
        self._sleep = sleep
        self._connections = threading.local()  # a kept-alive connection per thread and origin

    def object_url(self, bucket: str, key: str, version_id: str | None = None) -> str:
        """Path style against an endpoint override (as botocore addresses moto), else the regional endpoint,
        virtual-hosted where the bucket's name allows it; ``?versionId=`` for one version."""
        path = urllib.parse.quote(key, safe="/~")
        query = "" if version_id is None else f"?versionId={_encode(version_id)}"
        if self._endpoint_url is not None:
            return f"{self._endpoint_url}/{bucket}/{path}{query}"
        domain = "amazonaws.com.cn" if self._region.startswith("cn-") else "amazonaws.com"
        if _VIRTUAL_HOST_BUCKET.match(bucket):
            return f"https://{bucket}.s3.{self._region}.{domain}/{path}{query}"
        return f"https://s3.{self._region}.{domain}/{bucket}/{path}{query}"

    def put_object(
        self, *, Bucket: str, Key: str, Body: bytes, ContentType: str, IfNoneMatch: str | None = None
    ) -> dict[str, Any]:
        """Store ``Body`` (botocore's parameter names); answers what botocore's ``put_object`` would."""
        headers = _present({"Content-Type": ContentType, "If-None-Match": IfNoneMatch})
        reply = self._call("PutObject", "PUT", self.object_url(Bucket, Key), headers, Body)
        return {
            "ETag": reply.headers.get("etag"),
            "VersionId": reply.headers.get("x-amz-version-id"),
            "ResponseMetadata": _metadata(reply),
        }

    def get_object(
        self,
        *,
        Bucket: str,
        Key: str,
        VersionId: str | None = None,
        IfMatch: str | None = None,
        Range: str | None = None,
    ) -> dict[str, Any]:
        """The object's metadata and its ``Body`` (a :class:`ResponseBody`), as botocore's ``get_object``."""
        url = self.object_url(Bucket, Key, VersionId)
        reply = self._call("GetObject", "GET", url, _present({"If-Match": IfMatch, "Range": Range}), stream=True)
        body = reply.stream if reply.stream is not None else ResponseBody(io.BytesIO(reply.body), url)
        return {**_object_metadata(reply), "Body": body}

    def head_object(self, *, Bucket: str, Key: str, VersionId: str | None = None) -> dict[str, Any]:
        """The object's metadata, as botocore's ``head_object``; a missing object is a ``ClientError`` ``404``."""
        return _object_metadata(self._call("HeadObject", "HEAD", self.object_url(Bucket, Key, VersionId), {}))

    def _call(
        self,
        operation: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        stream: bool = False,
    ) -> Reply:
        """One signed request, with botocore's retries; an answer other than a success is a ``ClientError``."""
        for attempt in range(1, self.attempts + 1):
            signed = sign(method, url, headers, body, self._credentials, self._region, self._clock())
            request = SignedRequest(method, url, {**signed, "user-agent": USER_AGENT}, body)
            try:
                reply = self._send(request, stream=stream)
            except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError):
                if attempt == self.attempts:
                    raise
            else:
                if reply.status < 300:
                    return reply
                error = _client_error(reply, operation)
                if attempt == self.attempts or not _retryable(reply.status, error):
                    raise error
            self._sleep(min(BACKOFF_CAP_S, random.random() * 2 ** (attempt - 1)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, request: SignedRequest, *, stream: bool = False) -> Reply:
        """The answer; with ``stream``, a success's body is left on the connection (``Reply.stream``)."""
        for sender in IN_PROCESS_SENDERS:
            reply = sender(request)
            if reply is not None:
                return reply
        parts = urllib.parse.urlsplit(request.url)
        origin = (parts.scheme, parts.netloc)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        pool: dict[tuple[str, str], http.client.HTTPConnection] = self._connections.__dict__.setdefault("pool", {})
        reused = origin in pool
        connection = pool.pop(origin, None) or self._connect(parts)
        headers = {**request.headers, "content-length": str(len(request.body))}

        def release(drained: bool) -> None:
            """Keep the connection for this thread's next request if its answer was read whole and it stays open."""
            if drained and not response.will_close:
                pool[origin] = connection
            else:
                connection.close()

        try:
            try:
                connection.request(request.method, target, body=request.body, headers=headers)
                response = connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed a kept-alive connection while it sat idle, before it read this request: send
                # again on a new one.
                connection.close()
                connection = self._connect(parts)
                connection.request(request.method, target, body=request.body, headers=headers)
                response = connection.getresponse()
            answer_headers = {name.lower(): value for name, value in response.getheaders()}
            if stream and response.status < 300:
                return Reply(response.status, answer_headers, b"", ResponseBody(response, request.url, release))
            body = response.read()
        except TimeoutError as exc:
            connection.close()
            raise ReadTimeoutError(endpoint_url=request.url, error=exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ConnectionClosedError(endpoint_url=request.url, error=exc) from exc
        release(drained=True)
        return Reply(response.status, answer_headers, body)

    def _connect(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        host, port = parts.hostname or "", parts.port
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=CONNECT_TIMEOUT_S)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise EndpointConnectionError(endpoint_url=parts.geturl(), error=exc) from exc
        if connection.sock is not None:  # connecting may take 5 s; an answer may take 30
            connection.sock.settimeout(READ_TIMEOUT_S)
        return connection


def _present(headers: Mapping[str, str | None]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if value is not None}


def _object_metadata(reply: Reply) -> dict[str, Any]:
    """The keys of botocore's GetObject and HeadObject answers that exist for this reply."""
    answer: dict[str, Any] = {
        "ContentLength": int(reply.headers.get("content-length", len(reply.body))),
        "ResponseMetadata": _metadata(reply),
    }
    for key, header in (
        ("ETag", "etag"),
        ("VersionId", "x-amz-version-id"),
        ("ContentType", "content-type"),
        ("ContentRange", "content-range"),
    ):
        if header in reply.headers:
            answer[key] = reply.headers[header]
    return answer


def _metadata(reply: Reply) -> dict[str, Any]:
    return {
        "HTTPStatusCode": reply.status,
        "RequestId": reply.headers.get("x-amz-request-id", ""),
        "HTTPHeaders": dict(reply.headers),
    }


def _client_error(reply: Reply, operation: str) -> ClientError:
    """botocore's ``ClientError`` for an S3 error answer: its XML ``Code`` and ``Message``, else the status."""
    fields = {name.decode(): value.decode("utf-8", "replace") for name, value in _ERROR_FIELD.findall(reply.body)}
    # A HEAD's error has no body: botocore names it by its status, and its reason.
    error = {
        "Code": fields.get("Code") or str(reply.status),
        "Message": fields.get("Message") or _reason(reply.status),
    }
    return ClientError({"Error": error, "ResponseMetadata": _metadata(reply)}, operation)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _retryable(status: int, error: ClientError) -> bool:
    return status in _RETRYABLE_STATUSES or error.response["Error"].get("Code") in _THROTTLING_CODES
