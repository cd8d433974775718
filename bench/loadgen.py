"""A cheap HTTP/1.1 load generator for the endpoint, run in its own process.

``concurrency`` keep-alive connections each keep one request in flight (a closed loop): send, read the
whole answer, send the next. Requests are built once, up front; answers are parsed just far enough to
find their status and length. Only answers completed after the warm-up count, and the run stops at
``duration_s`` or after ``max_requests`` answers, whichever comes first. Loopback only.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.figures import percentile

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    answers: int  # completed after the warm-up
    errors: int  # answers other than 200, and connections lost
    seconds: float  # from the end of the warm-up to the last answer
    latencies_ms: Sequence[float]

    @property
    def per_second(self) -> float:
        return self.answers / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def build_requests(bodies: Sequence[bytes], content_type: str = "image/png") -> list[bytes]:
    """``POST /invocations`` requests, one per body, ready to write."""
    return [
        (
            f"POST /invocations HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: {content_type}\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        + body
        for body in bodies
    ]


class _Run:
    def __init__(self, requests: Sequence[bytes], warmup_until: float, stop_at: float, max_requests: int) -> None:
        self.requests = requests
        self.next_index = 0
        self.warmup_until = warmup_until
        self.stop_at = stop_at
        self.max_requests = max_requests
        self.latencies = array("d")
        self.errors = 0
        self.last_answer = warmup_until

    def take(self) -> bytes | None:
        if len(self.latencies) >= self.max_requests or time.perf_counter() >= self.stop_at:
            return None
        request = self.requests[self.next_index % len(self.requests)]
        self.next_index += 1
        return request


class _Client(asyncio.Protocol):
    def __init__(self, run: _Run, done: asyncio.Future[None]) -> None:
        self._run = run
        self._done = done
        self._buffer = b""
        self._needed = 0  # bytes of the current answer (head + body), once its head is in
        self._status = 0
        self._sent_at = 0.0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        request = self._run.take()
        if request is None:
            self._transport.close()
            return
        self._sent_at = time.perf_counter()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if not self._needed:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buffer[:end].decode("latin-1")
                self._status = int(head[9:12])
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self._needed = end + 4 + length
            if len(self._buffer) < self._needed:
                return
            self._buffer = self._buffer[self._needed :]
            self._needed = 0
            now = time.perf_counter()
            if self._status != 200:
                self._run.errors += 1
            elif now >= self._run.warmup_until:
                self._run.latencies.append((now - self._sent_at) * 1000.0)
                self._run.last_answer = now
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._needed or self._buffer:
            self._run.errors += 1
        if not self._done.done():
            self._done.set_result(None)


async def _load(
    port: int, requests: Sequence[bytes], concurrency: int, duration_s: float, warmup_s: float, max_requests: int
) -> LoadResult:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    run = _Run(requests, started + warmup_s, started + warmup_s + duration_s, max_requests)
    finished: list[asyncio.Future[None]] = []
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(functools.partial(_Client, run, done), LOOPBACK, port)
        finished.append(done)
    await asyncio.wait_for(asyncio.gather(*finished), timeout=warmup_s + duration_s + 30)
    return LoadResult(
        concurrency=concurrency,
        answers=len(run.latencies),
        errors=run.errors,
        seconds=max(0.0, run.last_answer - run.warmup_until),
        latencies_ms=run.latencies.tolist(),
    )


def _child(
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    results: Any,  # a multiprocessing queue
) -> None:
    results.put(asyncio.run(_load(port, requests, concurrency, duration_s, warmup_s, max_requests)))


def run_load(
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.3,
    max_requests: int = 200_000,
) -> LoadResult:
    """Drive ``127.0.0.1:port`` from a fresh process and return what it measured."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_child,
        args=(port, list(requests), concurrency, duration_s, warmup_s, max_requests, results),
        name=f"bench-load-c{concurrency}",
        daemon=True,
    )
    process.start()
    try:
        result: LoadResult = results.get(timeout=warmup_s + duration_s + 60)
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    return result
