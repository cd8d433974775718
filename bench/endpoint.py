"""The endpoint server over loopback: requests/s and latency at concurrency 1, 8 and 16, batching on and off.

The server (``ModelServer``) runs in this process with the model on the threads ``bayroute serve`` and the
local stack give it (``bayroute.serving.server_model_threads``: every core but one); the load comes from
another process (``bench.loadgen``) over keep-alive connections, with real 32x32 PNG bodies (what the infer
step sends). Each repeat runs every (concurrency, batching) pair back to back, so the batching ratio is
measured side by side, plus concurrency 16 with ONNX Runtime's default thread pool (a thread per core) for
comparison. The server process's CPU time per answer is
recorded too: unlike wall-clock rates it hardly depends on what else the machine runs.

The transport ceiling is the same server and load at concurrency 16 with a model that answers at once
(``InstantModel``): what HTTP, decoding, batching and the load generator alone allow on this machine, which no
model, however cheap, can exceed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.config import Settings
from bayroute.endpoint_server import ModelServer
from bayroute.model.onnx_model import OnnxClassifier
from bayroute.serving import server_model_threads
from bench.figures import Figure, figure
from bench.loadgen import LoadResult, build_requests, run_load

CONCURRENCIES = (1, 8, 16)
THROUGHPUT_GOAL = 3000.0
P99_GOAL_MS = 10.0


class InstantModel(OnnxClassifier):
    """The served model's file and metadata, but ``predict`` costs nothing: isolates the transport's cost."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        count = 1 if images.ndim == 3 else len(images)
        return np.full((count, len(self.labels)), 1.0 / len(self.labels), dtype=np.float32)


def _server(classifier: OnnxClassifier, settings: Settings, batching: bool) -> ModelServer:
    return ModelServer(
        classifier,
        "127.0.0.1",
        0,
        max_request_bytes=settings.limits.max_request_bytes,
        max_pixels=settings.limits.max_image_pixels,
        batching=batching,
    ).start()


def _run(
    server: ModelServer, requests: Sequence[bytes], concurrency: int, duration_s: float
) -> tuple[LoadResult, float]:
    """One load run, and this process's CPU milliseconds per answer (the server is all this process runs)."""
    cpu = time.process_time()
    result = run_load(server.port, requests, concurrency=concurrency, duration_s=duration_s)
    return result, (time.process_time() - cpu) * 1000.0 / max(1, result.answers)


def measure(
    model_path: Path,
    settings: Settings,
    bodies: Sequence[bytes],
    repeats: int,
    duration_s: float,
    model_limit_images_per_s: float | None = None,
) -> tuple[list[Figure], dict[str, Any]]:
    model_threads = server_model_threads()
    classifier = OnnxClassifier(model_path, intra_op_threads=model_threads, inter_op_threads=1)
    default_threads = OnnxClassifier(model_path)
    requests = build_requests(bodies)
    results: dict[tuple[int, bool], list[LoadResult]] = {}
    default_runs: list[LoadResult] = []
    transport_runs: list[LoadResult] = []
    cpu_ms: dict[str, list[float]] = {"server_model_threads": [], "default_threads": [], "instant_model": []}
    servers = {batching: _server(classifier, settings, batching) for batching in (False, True)}
    default_server = _server(default_threads, settings, True)
    transport_server = _server(InstantModel(model_path, intra_op_threads=model_threads), settings, True)
    try:
        for _ in range(repeats):
            for concurrency in CONCURRENCIES:
                for batching, server in servers.items():
                    result, cpu = _run(server, requests, concurrency, duration_s)
                    results.setdefault((concurrency, batching), []).append(result)
                    if concurrency == 16 and batching:
                        cpu_ms["server_model_threads"].append(cpu)
            result, cpu = _run(default_server, requests, 16, duration_s)
            default_runs.append(result)
            cpu_ms["default_threads"].append(cpu)
            result, cpu = _run(transport_server, requests, 16, duration_s)
            transport_runs.append(result)
            cpu_ms["instant_model"].append(cpu)
    finally:
        for server in (*servers.values(), default_server, transport_server):
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
    throughput_value = float(np.median(throughput))
    details = {
        "grid": grid,
        "batching_vs_direct_c16": round(float(np.median(ratio)), 3) if ratio else None,
        "server_cpu_ms_per_answer_c16_batching": {k: round(float(np.median(v)), 3) for k, v in cpu_ms.items()},
        "default_threads_c16_batching": {
            "requests_per_s": round(float(np.median([r.per_second for r in default_runs])), 1),
            "p99_ms": round(float(np.median([r.latency_ms(99) for r in default_runs])), 3),
        },
        # The server and load generator with a model that costs nothing: no model can beat it either.
        "transport_ceiling_c16_batching": {
            "requests_per_s": round(float(np.median([r.per_second for r in transport_runs])), 1),
            "p99_ms": round(float(np.median([r.latency_ms(99) for r in transport_runs])), 3),
            "errors": sum(r.errors for r in transport_runs),
        },
        # The model alone (batches of 32, all cores, from the model section): no server can beat it.
        "model_only_images_per_s": round(model_limit_images_per_s, 1) if model_limit_images_per_s else None,
        "share_of_model_only_limit": (
            round(throughput_value / model_limit_images_per_s, 3) if model_limit_images_per_s else None
        ),
        "errors": errors,
        "seconds_per_run": duration_s,
        "model_threads": model_threads,
    }
    throughput_figure = figure(
        "endpoint_throughput_c16",
        f"endpoint images/s at concurrency 16, dynamic batching on, model on {model_threads} thread(s)",
        throughput,
        "images/s",
        goal=f"≥ {THROUGHPUT_GOAL:,.0f} images/s with p99 ≤ {P99_GOAL_MS:.0f} ms",
        met=throughput_value >= THROUGHPUT_GOAL and float(np.median(p99)) <= P99_GOAL_MS and not errors,
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
