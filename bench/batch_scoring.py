"""``bayroute batch score`` against the limit measured in the same run.

The limit is what the machine does with no overhead at all: pure decoding (``bayroute.imaging``, the same
decoder, on images already in memory, in as many processes as the batch command uses) plus pure batched
inference on tensors already decoded (the faster of one ONNX Runtime thread and all cores, so the limit is
the stricter one). Its throughput is ``images / (decode seconds + inference seconds)``. The command is the
real ``bayroute batch score`` (its typer function, in this process): it lists the folder, reads every file,
decodes in worker processes, infers in batches, writes the JSON lines and the capture files. Each repeat
measures the limit and the command back to back.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.batch import Target, list_images, load_results
from bayroute.commands.batch import score_command
from bayroute.config import Settings
from bayroute.imaging import decode_png_payload
from bayroute.model.onnx_model import OnnxClassifier
from bench.figures import Figure, figure

GOAL = 0.6
BATCH_SIZE = 64


def _decode_all(chunk: Sequence[bytes]) -> bytes:
    return b"".join(decode_png_payload(data, 32).tobytes() for data in chunk)


def measure(
    folder: Path, model_path: Path, settings: Settings, workers: int, repeats: int
) -> tuple[list[Figure], dict[str, Any]]:
    classifiers = [OnnxClassifier(model_path, intra_op_threads=1), OnnxClassifier(model_path)]
    items = list_images(Target(folder=folder))
    datas = [Path(item.location).read_bytes() for item in items]
    size = settings.model_input_size
    chunks = [datas[start : start + 16] for start in range(0, len(datas), 16)]
    ratios, commands, limits, decode_s, infer_s = [], [], [], [], []
    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as scratch:
        for repeat in range(repeats):
            with context.Pool(workers) as pool:
                pool.map(abs, range(workers))  # workers started before the clock
                started = time.perf_counter()
                pixels = b"".join(pool.map(_decode_all, chunks))
                decoded = time.perf_counter()
            tensors = np.frombuffer(pixels, dtype=np.uint8).reshape(len(datas), size, size, 3)
            inference = []
            for classifier in classifiers:
                inferred = time.perf_counter()
                for start in range(0, len(tensors), BATCH_SIZE):
                    classifier.predict(tensors[start : start + BATCH_SIZE])
                inference.append(time.perf_counter() - inferred)
            decode_s.append(decoded - started)
            infer_s.append(min(inference))
            limit = len(datas) / ((decoded - started) + min(inference))

            out = Path(scratch) / f"scores-{repeat}.jsonl"
            started = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
                score_command(
                    str(folder),
                    out,
                    model=model_path,
                    workers=workers,
                    batch_size=BATCH_SIZE,
                    capture=str(Path(scratch) / f"capture-{repeat}"),
                    no_capture=False,
                )
            command = len(datas) / (time.perf_counter() - started)
            scored = sum("error" not in line for line in load_results(out))
            if scored != len(datas):
                raise RuntimeError(f"batch score scored {scored} of {len(datas)} images")
            limits.append(limit)
            commands.append(command)
            ratios.append(command / limit)
    entry = figure(
        "batch_score_ratio_to_limit",
        "batch score images/s as a share of the decode + inference limit",
        ratios,
        "ratio",
        goal=f"≥ {GOAL:.0%} of the limit",
        met=float(np.median(ratios)) >= GOAL,
        reference="pure decode (same workers) + pure batched inference on preloaded tensors, same run",
        details={
            "images": len(datas),
            "workers": workers,
            "batch_size": BATCH_SIZE,
            "command_images_per_s": round(float(np.median(commands)), 1),
            "limit_images_per_s": round(float(np.median(limits)), 1),
            "decode_s": round(float(np.median(decode_s)), 3),
            "inference_s": round(float(np.median(infer_s)), 3),
            "command": "bayroute batch score <folder> --out ... (folder listing, file reads, JSON lines, captures)",
        },
    )
    return [entry], {}
