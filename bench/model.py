"""The model alone: ONNX Runtime against PyTorch eager on the same weights, single images and batches of 32.

The torch side is rebuilt from the training code (``training.model.ResNet9`` inside
``training.export.ServingGraph``, the exact graph that was exported) and loaded with the ONNX file's own
initializers, which the exporter names after the torch state dict. Both sides are checked to agree before
anything is timed. Repeats alternate between the two runtimes so that a busy neighbour hurts both alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.model.onnx_model import OnnxClassifier
from bench.figures import Figure, figure, percentile

SINGLE_CALLS = 600
BATCH = 32
BATCH_SECONDS = 1.0
WARMUP_CALLS = 50
LATENCY_GOAL_MS = 0.5


def torch_graph(model_path: Path) -> Any:
    """The served graph in PyTorch eager mode with the ONNX file's weights (needs the ``training`` extra)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from training.export import ServingGraph
    from training.model import GroupedResNet9, LogitMean, ResNet9

    proto = onnx.load(str(model_path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer}
    labels = json.loads(metadata["labels"])
    # One network's weights are "network.features...": a ResNet9, or a seed ensemble fused into one network with
    # grouped convolutions (its second convolution reads a member's share of the first one's channels).
    # Ensembles exported before the fusion: "network.members.<k>.features...".
    first_layers = sorted(name for name in weights if name.endswith("features.0.0.weight"))
    if not first_layers:
        raise RuntimeError(f"{model_path} holds no ResNet9 weights")
    network: torch.nn.Module
    if first_layers == ["network.features.0.0.weight"]:
        channels = int(weights[first_layers[0]].shape[0])
        members = channels // int(weights["network.features.1.0.weight"].shape[1])
        network = (
            ResNet9(len(labels), width=channels)
            if members == 1
            else GroupedResNet9(len(labels), channels // members, members)
        )
    else:
        width = int(weights[first_layers[0]].shape[0])
        network = LogitMean([ResNet9(len(labels), width=width) for _ in first_layers])
    graph = ServingGraph(
        network,
        json.loads(metadata["mean"]),
        json.loads(metadata["std"]),
        float(metadata["temperature"]),
        metadata.get("tta", "none") == "flip",
    )
    state = graph.state_dict()
    weights.update(_unfused_batch_norms(graph, weights))
    # Only the network's weights come from the graph: the normalisation constants were built from the metadata
    # above, and a file's own copies have the layout of the graph that wrote it.
    network_names = [name for name in state if name.startswith("network.") and not name.endswith("num_batches_tracked")]
    missing = [name for name in network_names if name not in weights]
    if missing:
        raise RuntimeError(f"{model_path} lacks torch weights {missing[:5]}: it was not exported from ResNet9")
    graph.load_state_dict({**state, **{name: weights[name] for name in network_names}})
    return graph.eval()


def _unfused_batch_norms(graph: Any, weights: dict[str, Any]) -> dict[str, Any]:
    """BatchNorm parameters for convolutions the exporter fused with their BatchNorm (``<conv>.weight_bias``).

    The fused convolution's weight is already in ``weights``; its BatchNorm becomes the identity plus the fused
    bias, so eager PyTorch computes the same function with the same layers (and the same cost) it trained with.
    """
    import torch

    restored: dict[str, Any] = {}
    for name, module in graph.named_modules():
        if not isinstance(module, torch.nn.BatchNorm2d) or f"{name}.weight" in weights or not name.endswith(".1"):
            continue
        fused_bias = weights.get(f"{name[:-2]}.0.weight_bias")
        if fused_bias is None:
            continue
        ones = torch.ones_like(fused_bias)
        restored[f"{name}.weight"] = ones
        restored[f"{name}.bias"] = fused_bias
        restored[f"{name}.running_mean"] = torch.zeros_like(fused_bias)
        restored[f"{name}.running_var"] = ones * (1.0 - module.eps)  # so that sqrt(var + eps) is exactly 1
    return restored


def _latencies_ms(call: Callable[[], Any], count: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU time (this thread's) of each call: their gap is time spent waiting for a core."""
    for _ in range(WARMUP_CALLS):
        call()
    wall, cpu = [], []
    for _ in range(count):
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        call()
        cpu.append((time.thread_time_ns() - started_cpu) / 1e6)
        wall.append((time.perf_counter_ns() - started) / 1e6)
    return wall, cpu


def _throughput(call: Callable[[], Any], images_per_call: int, seconds: float) -> float:
    call()
    started = time.perf_counter()
    images = 0
    while time.perf_counter() - started < seconds:
        call()
        images += images_per_call
    return images / (time.perf_counter() - started)


def measure(model_path: Path, images: np.ndarray, repeats: int) -> tuple[list[Figure], dict[str, Any]]:
    """``model_latency_p99_ms`` and ``model_vs_torch_speedup``, plus the raw numbers for other figures."""
    import torch

    single = images[:1]
    batch = np.ascontiguousarray(np.resize(images, (BATCH, *images.shape[1:])))
    # Single images as the infer function's in-process backend runs them: ONNX Runtime's default, a thread per
    # core; one thread is measured beside it. On a quiet 2-core machine two threads answered a fifth sooner;
    # when neighbours took cycles, no sooner. Every core for a batch too. PyTorch gets the same thread counts.
    ort_single = OnnxClassifier(model_path)
    ort_one_thread = OnnxClassifier(model_path, intra_op_threads=1, inter_op_threads=1)
    ort_batch = OnnxClassifier(model_path, inter_op_threads=1)
    graph = torch_graph(model_path)
    with torch.inference_mode():
        torch_single_input = torch.from_numpy(single.copy())
        torch_batch_input = torch.from_numpy(batch.copy())
        parity = float(np.abs(graph(torch_batch_input).numpy() - ort_batch.predict(batch)).max())
    if not parity < 1e-4:
        raise RuntimeError(f"PyTorch and ONNX Runtime disagree by {parity:.2e}: not the same weights")

    cores = torch.get_num_threads()
    runs: dict[str, list[float]] = {
        key: []
        for key in (
            *("ort_p50", "ort_p99", "ort_1thread_p50", "ort_1thread_p99", "ort_1thread_cpu_p99"),
            *("torch_p50", "torch_p99", "ort_b32", "torch_b32"),
        )
    }
    with torch.inference_mode():
        for _ in range(repeats):
            samples, _ = _latencies_ms(lambda: ort_single.predict(single), SINGLE_CALLS)
            runs["ort_p50"].append(percentile(samples, 50))
            runs["ort_p99"].append(percentile(samples, 99))
            samples, cpu = _latencies_ms(lambda: ort_one_thread.predict(single), SINGLE_CALLS)
            runs["ort_1thread_p50"].append(percentile(samples, 50))
            runs["ort_1thread_p99"].append(percentile(samples, 99))
            runs["ort_1thread_cpu_p99"].append(percentile(cpu, 99))
            samples, _ = _latencies_ms(lambda: graph(torch_single_input), SINGLE_CALLS)
            runs["torch_p50"].append(percentile(samples, 50))
            runs["torch_p99"].append(percentile(samples, 99))
            runs["ort_b32"].append(_throughput(lambda: ort_batch.predict(batch), BATCH, BATCH_SECONDS))
            runs["torch_b32"].append(_throughput(lambda: graph(torch_batch_input), BATCH, BATCH_SECONDS))

    speedups = [t / o for t, o in zip(runs["torch_p50"], runs["ort_p50"], strict=True)]
    batch_speedups = [o / t for o, t in zip(runs["ort_b32"], runs["torch_b32"], strict=True)]
    rounded = {key: [round(v, 4) for v in values] for key, values in runs.items()}
    p99 = figure(
        "model_latency_p99_ms",
        f"model single-image latency p99, ONNX Runtime ({ort_single.intra_op_threads or cores} threads)",
        runs["ort_p99"],
        "ms",
        goal=f"≤ {LATENCY_GOAL_MS} ms on 2 cores",
        met=float(np.median(runs["ort_p99"])) <= LATENCY_GOAL_MS,
        details={
            "p50_ms": round(float(np.median(runs["ort_p50"])), 4),
            "one_thread": {
                "p50_ms": round(float(np.median(runs["ort_1thread_p50"])), 4),
                "p99_ms": round(float(np.median(runs["ort_1thread_p99"])), 4),
                # The same calls' CPU time: a p99 far above it is time spent waiting for a core on a busy machine.
                "cpu_time_p99_ms": round(float(np.median(runs["ort_1thread_cpu_p99"])), 4),
            },
            "threads": cores,
            "calls_per_repeat": SINGLE_CALLS,
            "batch32_images_per_s": round(float(np.median(runs["ort_b32"])), 1),
            "per_repeat": rounded,
        },
    )
    speedup = figure(
        "model_vs_torch_speedup",
        "model single-image p50 speedup over PyTorch eager, same weights",
        speedups,
        "x",
        goal="> 1 (ONNX Runtime faster than PyTorch eager)",
        met=float(np.median(speedups)) > 1.0,
        reference=f"PyTorch eager p50 latency ({cores} threads), same weights, same run",
        details={
            "torch_p50_ms": round(float(np.median(runs["torch_p50"])), 4),
            "torch_p99_ms": round(float(np.median(runs["torch_p99"])), 4),
            "batch32_speedup": round(float(np.median(batch_speedups)), 3),
            "batch32_images_per_s": {
                "onnxruntime": round(float(np.median(runs["ort_b32"])), 1),
                "torch": round(float(np.median(runs["torch_b32"])), 1),
                "threads": cores,
            },
            "max_abs_difference": parity,
        },
    )
    return [p99, speedup], {"batch32_images_per_s": float(np.median(runs["ort_b32"]))}
