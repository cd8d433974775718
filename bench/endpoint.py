"""The endpoint server over loopback: requests/s and latency at concurrency 1, 8 and 16, batching on and off.

The server runs as ``bayroute serve`` runs it by default: one process per usable core sharing the port
(``bayroute.endpoint_workers``), each with its share of the cores for its model
(``bayroute.serving.server_model_threads``). The load comes from another process (``bench.loadgen``) over
keep-alive connections, with real 32x32 PNG bodies (what the infer step sends). Each repeat runs every
(concurrency, batching) pair back to back, so the batching ratio is measured side by side, and beside them,
at concurrency 16 with batching, one server process in this process (what the local stack runs). The
servers' CPU time per answer is recorded too (the workers' from ``/proc``): unlike wall-clock rates it hardly
depends on what else the machine runs.

The transport ceiling is the same servers and load at concurrency 16 with a model that answers at once
(``InstantModel``): what HTTP, decoding, batching and the load generator alone allow on this machine, which no
model, however cheap, can exceed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.config import Settings
from bayroute.endpoint_server import ModelServer
from bayroute.endpoint_workers import ServerWorkers, WorkerOptions, load_onnx_model
from bayroute.model.onnx_model import OnnxClassifier
from bayroute.serving import server_model_threads, server_workers
from bench.figures import Figure, cpu_seconds, figure
from bench.loadgen import LoadResult, build_requests, run_load

CONCURRENCIES = (1, 8, 16)
THROUGHPUT_GOAL = 3000.0
P99_GOAL_MS = 10.0


class InstantModel(OnnxClassifier):
    """The served model's file and metadata, but ``predict`` costs nothing: isolates the transport's cost."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        count = 1 if images.ndim == 3 else len(images)
        return np.full((count, len(self.labels)), 1.0 / len(self.labels), dtype=np.float32)


def load_instant_model(options: WorkerOptions) -> OnnxClassifier:
    """``InstantModel`` in each server worker (module level: spawned workers import it by name)."""
    return InstantModel(options.model_path, intra_op_threads=options.model_threads)


def _server(classifier: OnnxClassifier, settings: Settings, batching: bool) -> ModelServer:
    return ModelServer(
        classifier,
        "127.0.0.1",
        0,
        max_request_bytes=settings.limits.max_request_bytes,
        max_pixels=settings.limits.max_image_pixels,
        batching=batching,
    ).start()


def _workers(
    model_path: Path,
    settings: Settings,
    batching: bool,
    workers: int,
    load_model: Callable[[WorkerOptions], OnnxClassifier] = load_onnx_model,
) -> ServerWorkers:
    options = WorkerOptions(
        model_path=str(model_path),
        host="127.0.0.1",
        port=0,
        max_request_bytes=settings.limits.max_request_bytes,
        max_pixels=settings.limits.max_image_pixels,
        batching=batching,
        model_threads=server_model_threads(workers=workers),
    )
    return ServerWorkers(options, workers, load_model).start()


def _run(
    server: ModelServer | ServerWorkers, requests: Sequence[bytes], concurrency: int, duration_s: float
) -> tuple[LoadResult, float]:
    """One load run, and the server's CPU milliseconds per answer."""
    pids = server.pids if isinstance(server, ServerWorkers) else []
    cpu = cpu_seconds(pids)
    result = run_load(server.port, requests, concurrency=concurrency, duration_s=duration_s)
    return result, (cpu_seconds(pids) - cpu) * 1000.0 / max(1, result.answers)


def measure(
    model_path: Path,
    settings: Settings,
    bodies: Sequence[bytes],
    repeats: int,
    duration_s: float,
    model_limit_images_per_s: float | None = None,
) -> tuple[list[Figure], dict[str, Any]]:
    workers = server_workers({})  # one per usable core, as `bayroute serve` runs without the SageMaker variable
    model_threads = server_model_threads(workers=workers)
    single_threads = server_model_threads()
    requests = build_requests(bodies)
    results: dict[tuple[int, bool], list[LoadResult]] = {}
    comparisons: dict[str, list[LoadResult]] = {
        "single_process": [],
        "transport_ceiling": [],
        "transport_ceiling_single_process": [],
    }
    cpu_ms: dict[str, list[float]] = {"workers": [], **{name: [] for name in comparisons}}
    servers = {batching: _workers(model_path, settings, batching, workers) for batching in (False, True)}
    others: dict[str, ModelServer | ServerWorkers] = {
        "single_process": _server(
            OnnxClassifier(model_path, intra_op_threads=single_threads, inter_op_threads=1), settings, True
        ),
        "transport_ceiling": _workers(model_path, settings, True, workers, load_instant_model),
        "transport_ceiling_single_process": _server(
            InstantModel(model_path, intra_op_threads=single_threads), settings, True
        ),
    }
    try:
        for _ in range(repeats):
            for concurrency in CONCURRENCIES:
                for batching, server in servers.items():
                    result, cpu = _run(server, requests, concurrency, duration_s)
                    results.setdefault((concurrency, batching), []).append(result)
                    if concurrency == 16 and batching:
                        cpu_ms["workers"].append(cpu)
            for name, other in others.items():
                result, cpu = _run(other, requests, 16, duration_s)
                comparisons[name].append(result)
                cpu_ms[name].append(cpu)
    finally:
        for running in (*servers.values(), *others.values()):
            running.stop()

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
    versus_single = [w.per_second / one.per_second for w, one in zip(on, comparisons["single_process"], strict=True)]
    errors = sum(r.errors for runs in results.values() for r in runs)
    throughput_value = float(np.median(throughput))
    details = {
        "grid": grid,
        "batching_vs_direct_c16": round(float(np.median(ratio)), 3) if ratio else None,
        "server_cpu_ms_per_answer_c16_batching": {k: round(float(np.median(v)), 3) for k, v in cpu_ms.items()},
        # Beside the workers, same load: one server process (the local stack's), and models that cost nothing
        # (the transport ceilings: no model, however cheap, can beat them).
        "c16_batching_comparisons": {
            name: {
                "requests_per_s": round(float(np.median([r.per_second for r in runs])), 1),
                "p99_ms": round(float(np.median([r.latency_ms(99) for r in runs])), 3),
                "errors": sum(r.errors for r in runs),
            }
            for name, runs in comparisons.items()
        },
        "workers_vs_single_process_c16": round(float(np.median(versus_single)), 3),
        # The model alone (batches of 32, all cores, from the model section): no server can beat it.
        "model_only_images_per_s": round(model_limit_images_per_s, 1) if model_limit_images_per_s else None,
        "share_of_model_only_limit": (
            round(throughput_value / model_limit_images_per_s, 3) if model_limit_images_per_s else None
        ),
        "errors": errors,
        "seconds_per_run": duration_s,
        "workers": workers,
        "model_threads_per_worker": model_threads,
    }
    throughput_figure = figure(
        "endpoint_throughput_c16",
        f"endpoint images/s at concurrency 16, dynamic batching on, {workers} server process(es) with "
        f"{model_threads} model thread(s) each",
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
