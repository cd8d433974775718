"""The endpoint server over loopback: requests/s and latency at concurrency 1, 8 and 16, batching on and off.

The server runs in this process exactly as ``bayroute serve`` builds it; the load comes from another process
(``bench.loadgen``) over keep-alive connections, with real 32x32 PNG bodies (what the infer step sends). Each
repeat runs every (concurrency, batching) pair back to back, so the batching ratio is measured side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.config import Settings
from bayroute.endpoint_server import ModelServer
from bayroute.model.onnx_model import OnnxClassifier
from bench.figures import Figure, figure
from bench.loadgen import LoadResult, build_requests, run_load

CONCURRENCIES = (1, 8, 16)
THROUGHPUT_GOAL = 3000.0
P99_GOAL_MS = 10.0


def measure(
    model_path: Path, settings: Settings, bodies: Sequence[bytes], repeats: int, duration_s: float
) -> tuple[list[Figure], dict[str, Any]]:
    classifier = OnnxClassifier(model_path)
    requests = build_requests(bodies)
    results: dict[tuple[int, bool], list[LoadResult]] = {}
    servers = {
        batching: ModelServer(
            classifier,
            "127.0.0.1",
            0,
            max_request_bytes=settings.limits.max_request_bytes,
            max_pixels=settings.limits.max_image_pixels,
            batching=batching,
        ).start()
        for batching in (False, True)
    }
    try:
        for _ in range(repeats):
            for concurrency in CONCURRENCIES:
                for batching, server in servers.items():
                    result = run_load(server.port, requests, concurrency=concurrency, duration_s=duration_s)
                    results.setdefault((concurrency, batching), []).append(result)
    finally:
        for server in servers.values():
            server.stop()

    def table(concurrency: int, batching: bool) -> dict[str, Any]:
        runs = results[(concurrency, batching)]
        return {
            "requests_per_s": round(float(np.median([r.per_second for r in runs])), 1),
            "p50_ms": round(float(np.median([r.latency_ms(50) for r in runs])), 3),
            "p99_ms": round(float(np.median([r.latency_ms(99) for r in runs])), 3),
            "answers": [r.answers for r in runs],
            "errors": sum(r.errors for r in runs),
        }

    grid = {
        f"c{concurrency}_{'batching' if batching else 'direct'}": table(concurrency, batching)
        for concurrency in CONCURRENCIES
        for batching in (False, True)
    }
    on, off = results[(16, True)], results[(16, False)]
    throughput = [r.per_second for r in on]
    p99 = [r.latency_ms(99) for r in on]
    ratio = [b.per_second / d.per_second for b, d in zip(on, off, strict=True) if d.per_second > 0]
    errors = sum(r.errors for runs in results.values() for r in runs)
    details = {
        "grid": grid,
        "batching_vs_direct_c16": round(float(np.median(ratio)), 3) if ratio else None,
        "errors": errors,
        "seconds_per_run": duration_s,
        "model_threads": "ONNX Runtime default (all cores), as bayroute serve",
    }
    throughput_figure = figure(
        "endpoint_throughput_c16",
        "endpoint images/s at concurrency 16, dynamic batching on",
        throughput,
        "images/s",
        goal=f"≥ {THROUGHPUT_GOAL:,.0f} images/s with p99 ≤ {P99_GOAL_MS:.0f} ms",
        met=float(np.median(throughput)) >= THROUGHPUT_GOAL and float(np.median(p99)) <= P99_GOAL_MS and not errors,
        details=details,
        digits=1,
    )
    latency_figure = figure(
        "endpoint_latency_p99_c16_ms",
        "endpoint latency p99 at concurrency 16, dynamic batching on",
        p99,
        "ms",
        goal=f"≤ {P99_GOAL_MS:.0f} ms",
        met=float(np.median(p99)) <= P99_GOAL_MS,
        details={"p50_ms": grid["c16_batching"]["p50_ms"]},
    )
    return [throughput_figure, latency_figure], {"grid": grid}
