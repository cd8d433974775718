"""``bayroute batch score`` against the limit measured in the same run.

The limit is what the machine does with no overhead at all: pure decoding (``bayroute.imaging``, the same
decoder, on images already in memory, in as many processes as the batch command uses) plus pure batched
inference on tensors already decoded (the fastest of one ONNX Runtime thread and all cores, each in runs of
``BATCH_SIZE`` images and of the command's ``MODEL_RUN_IMAGES``, so the limit is the strictest of them). Its
throughput is ``images / (decode seconds + inference seconds)``. The command is the real ``bayroute batch
score`` (its typer function): it lists the folder, reads every file, decodes in worker processes, infers in
batches, writes the JSON lines and the capture files. Each repeat measures the limit and the command one after
the other, with a pause before each (``SETTLE_S``).

Both run in a fresh ``python -m bench.batch_scoring`` process, which imports what the command and the limit
need, as the ``bayroute`` command's own process does, and not the suite's PyTorch, moto and servers: the
command forks its workers from the process it runs in, and forking (and later reaping) a process costs in
proportion to the memory it maps. Measured in the suite's process, the command scored 4,183-4,594 images/s
(medians of three ``--only batch`` runs); in a process of its own, 4,957-5,536.

The figure is the folder as it is (1,000 images: a run of a fifth to half a second, of which the command's
start-up is a fair share). Its details add two measurements of the same images five times over (``larger_folder``),
limit and command alike, to show how much of the gap is start-up and how much is work per image.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.batch import MODEL_RUN_IMAGES, Target, list_images, load_results
from bayroute.commands.batch import score_command
from bayroute.config import Settings
from bayroute.imaging import decode_png_payload
from bayroute.model.onnx_model import OnnxClassifier
from bench.figures import Figure, figure, run_module

GOAL = 0.6
BATCH_SIZE = 64
# The figure scores the folder as it is; its details also score it this many times over, in one run.
LARGER_COPIES = 5
LARGER_REPEATS = 2
# A pause before each measurement: the command started the instant the limit's inference ended took 213-219 ms
# (medians of eight alternating rounds, three experiments) against 199-205 ms after a pause of 50 ms or more.
SETTLE_S = 0.1


def _decode_all(chunk: Sequence[bytes], size: int) -> bytes:
    return b"".join(decode_png_payload(data, size).tobytes() for data in chunk)


def _limit(
    datas: Sequence[bytes], classifiers: Sequence[OnnxClassifier], size: int, workers: int
) -> tuple[float, float, float]:
    """(images/s, decode seconds, inference seconds) of pure decoding in ``workers`` processes plus pure batched
    inference on the decoded tensors (the fastest classifier and run size)."""
    chunks = [datas[start : start + 16] for start in range(0, len(datas), 16)]
    time.sleep(SETTLE_S)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(abs, range(workers))  # workers started before the clock
        started = time.perf_counter()
        pixels = b"".join(pool.map(functools.partial(_decode_all, size=size), chunks))
        decode_s = time.perf_counter() - started
    tensors = np.frombuffer(pixels, dtype=np.uint8).reshape(len(datas), size, size, 3)
    inference = []
    for classifier in classifiers:
        for run in (BATCH_SIZE, MODEL_RUN_IMAGES):
            inferred = time.perf_counter()
            for start in range(0, len(tensors), run):
                classifier.predict(tensors[start : start + run])
            inference.append(time.perf_counter() - inferred)
    return len(datas) / (decode_s + min(inference)), decode_s, min(inference)


def _command(folder: Path, images: int, model_path: Path, workers: int, scratch: Path, name: str) -> float:
    """Images/s of the real ``bayroute batch score`` over ``folder`` (``images`` of them, all expected to score)."""
    out = scratch / f"scores-{name}.jsonl"
    time.sleep(SETTLE_S)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
        score_command(
            str(folder),
            out,
            model=model_path,
            workers=workers,
            batch_size=BATCH_SIZE,
            capture=str(scratch / f"capture-{name}"),
            no_capture=False,
        )
    command = images / (time.perf_counter() - started)
    scored = sum("error" not in line for line in load_results(out))
    if scored != images:
        raise RuntimeError(f"batch score scored {scored} of {images} images")
    return command


def measure(
    folder: Path, model_path: Path, settings: Settings, workers: int, repeats: int
) -> tuple[list[Figure], dict[str, Any]]:
    """The figure, from the measurements of a fresh ``python -m bench.batch_scoring`` process."""
    job = {
        "folder": str(folder),
        "model_path": str(model_path),
        "size": settings.model_input_size,
        "workers": workers,
        "repeats": repeats,
    }
    # About 15 s at the speed check's 24 ms; slow spells have measured four times that speed check.
    measured = run_module(
        "bench.batch_scoring", [json.dumps(job)], what="the batch scoring measurements", timeout_s=600.0
    )
    ratios = measured["ratios"]
    larger = measured["larger"]
    entry = figure(
        "batch_score_ratio_to_limit",
        "batch score images/s as a share of the decode + inference limit",
        ratios,
        "ratio",
        goal=f"≥ {GOAL:.0%} of the limit",
        met=float(np.median(ratios)) >= GOAL,
        reference="pure decode (same workers) + pure batched inference on preloaded tensors, same run",
        details={
            "images": measured["images"],
            "workers": workers,
            "batch_size": BATCH_SIZE,
            "command_images_per_s": round(float(np.median(measured["commands"])), 1),
            "limit_images_per_s": round(float(np.median(measured["limits"])), 1),
            "decode_s": round(float(np.median(measured["decode_s"])), 3),
            "inference_s": round(float(np.median(measured["inference_s"])), 3),
            "command": "bayroute batch score <folder> --out ... (folder listing, file reads, JSON lines, captures)",
            "larger_folder": {
                "images": larger["images"],
                "command_images_per_s": round(float(np.median(larger["commands"])), 1),
                "limit_images_per_s": round(float(np.median(larger["limits"])), 1),
                "ratio": round(float(np.median(larger["ratios"])), 3),
                "repeats": LARGER_REPEATS,
            },
        },
    )
    return [entry], {}


def _measure_here(folder: Path, model_path: Path, size: int, workers: int, repeats: int) -> dict[str, Any]:
    """The limit and the command, ``repeats`` times on the folder and ``LARGER_REPEATS`` times on it
    ``LARGER_COPIES`` times over, measured in this process."""
    classifiers = [OnnxClassifier(model_path, intra_op_threads=1), OnnxClassifier(model_path)]
    items = list_images(Target(folder=folder))
    datas = [Path(item.location).read_bytes() for item in items]
    ratios, commands, limits, decode_s, infer_s = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as temporary:
        scratch = Path(temporary)
        for repeat in range(repeats):
            limit, decoding, inference = _limit(datas, classifiers, size, workers)
            command = _command(folder, len(datas), model_path, workers, scratch, str(repeat))
            decode_s.append(decoding)
            infer_s.append(inference)
            limits.append(limit)
            commands.append(command)
            ratios.append(command / limit)
        # The same images LARGER_COPIES times over (links to them), measured the same way: what is left of
        # the gap once the command's start-up (fork, model loads, first chunks) is spread over more images.
        larger = scratch / "larger"
        for copy in range(LARGER_COPIES):
            (larger / str(copy)).mkdir(parents=True)
            for index, item in enumerate(items):
                (larger / str(copy) / f"{index:05d}{Path(item.location).suffix}").symlink_to(item.location)
        larger_datas = datas * LARGER_COPIES
        larger_limits, larger_commands, larger_ratios = [], [], []
        for repeat in range(LARGER_REPEATS):
            larger_limits.append(_limit(larger_datas, classifiers, size, workers)[0])
            larger_commands.append(
                _command(larger, len(larger_datas), model_path, workers, scratch, f"larger-{repeat}")
            )
            larger_ratios.append(larger_commands[-1] / larger_limits[-1])
    return {
        "images": len(datas),
        "ratios": ratios,
        "commands": commands,
        "limits": limits,
        "decode_s": decode_s,
        "inference_s": infer_s,
        "larger": {
            "images": len(larger_datas),
            "ratios": larger_ratios,
            "commands": larger_commands,
            "limits": larger_limits,
        },
    }


if __name__ == "__main__":
    measuring = json.loads(sys.argv[1])
    print(
        json.dumps(
            _measure_here(
                Path(measuring["folder"]),
                Path(measuring["model_path"]),
                int(measuring["size"]),
                int(measuring["workers"]),
                int(measuring["repeats"]),
            )
        )
    )
