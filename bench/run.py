"""``make bench``: run the benchmark suite, write ``bench/results/latest.json`` and the markdown table (into
``bench/results/latest.md``, and into the README when every section ran with full repeats).

    python -m bench.run [--quick] [--only model,endpoint,batch,cold,pipeline,train] [--out PATH]

Every figure is a median over repeats with its spread; ratios are measured side by side in the same run.
Load generators run in their own processes and talk to 127.0.0.1 only. ``BENCH_RETRAIN=1`` retrains the
default recipe instead of reading its times from the committed model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bayroute.config import REPO_ROOT, load_settings
from bayroute.imaging import prepare_image
from bayroute.model.onnx_model import OnnxClassifier
from bench import batch_scoring, coldstart, cost, endpoint, model, pipeline, train_figures
from bench.figures import Figure, machine_info, markdown_table, speed_check_ms

DATASET = REPO_ROOT.parent / "shared" / "datasets" / "cifar100-vehicles" / "train"
RESULTS = REPO_ROOT / "bench" / "results"
README = REPO_ROOT / "README.md"
# A full run (every section, full repeats) writes its table into the README between these lines.
TABLE_START = "<!-- bench-table:start (written by make bench) -->"
TABLE_END = "<!-- bench-table:end -->"
SECTIONS = ("model", "endpoint", "batch", "cold", "pipeline", "train")
ORDER = (
    "model_latency_p99_ms",
    "model_vs_torch_speedup",
    "endpoint_throughput_c16",
    "endpoint_latency_p99_c16_ms",
    "pipeline_latency_p50_ms",
    "pipeline_latency_p99_ms",
    "pipeline_throughput",
    "cold_start_infer_ms",
    "batch_score_ratio_to_limit",
    "train_time_to_90_s",
    "train_default_recipe_s",
    "cost_per_million_usd_lambda",
    "cost_per_million_usd_sagemaker",
)
SHARED_NOTE = (
    "The machine was shared with other work (training runs, test suites) while this ran: absolute latencies "
    "include waiting for a core; ratios were measured side by side."
)


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _images() -> tuple[list[bytes], np.ndarray]:
    if not DATASET.is_dir():
        raise SystemExit(f"the benchmark reads real images from {DATASET}; put ../shared beside the checkout")
    paths = sorted(DATASET.glob("*/*.png"))
    bodies = [path.read_bytes() for path in paths]
    arrays = np.stack([prepare_image(body, size=32, max_pixels=40_000_000).array for body in bodies])
    return bodies, arrays


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between its benchmark-table markers replaced by ``table``."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"the README needs the lines {TABLE_START!r} and then {TABLE_END!r} around the table")
    return f"{readme[: start + len(TABLE_START)]}\n\n{table.strip()}\n\n{readme[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter runs (a smoke test)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    sections = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    quick = args.quick
    # The stack's own chatter: werkzeug's access log, the local alarm evaluator, Powertools on empty metrics.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("bayroute.local.monitoring").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    started = time.perf_counter()
    settings = load_settings(env={})
    machine = machine_info(SHARED_NOTE)
    bodies, arrays = _images()
    classifier = OnnxClassifier(settings.model_path)
    confident = classifier.predict(arrays).max(axis=1) >= settings.threshold
    routable = [body for body, ok in zip(bodies, confident, strict=True) if ok]
    figures: list[Figure] = []
    extras: dict[str, Any] = {}

    if "model" in sections:
        _say("model: ONNX Runtime vs PyTorch eager")
        found, extra = model.measure(settings.model_path, arrays, repeats=2 if quick else 5)
        figures += found
        extras.update(extra)
    if "endpoint" in sections:
        _say("endpoint: loopback load at concurrency 1, 8, 16, batching on and off")
        found, extra = endpoint.measure(
            settings.model_path,
            settings,
            bodies[:256],
            repeats=1 if quick else 3,
            duration_s=1.0 if quick else 2.0,
            model_limit_images_per_s=extras.get("batch32_images_per_s"),
        )
        figures += found
        extras["endpoint_c16_images_per_s"] = found[0].value
    if "batch" in sections:
        _say("batch: bayroute batch score against decode + inference")
        # Five repeats: one takes about 2 s, and its ratio moves by ±0.05 from run to run on a shared machine.
        found, _ = batch_scoring.measure(DATASET, settings.model_path, settings, workers=2, repeats=1 if quick else 5)
        figures += found
    if "cold" in sections:
        _say("cold start: a fresh process per function, to its first answer (infer with the in-Lambda backend)")
        found, extra = coldstart.measure(settings, routable[0], repeats=2 if quick else 5)
        figures += found
        extras.update(extra)
    if "pipeline" in sections:
        _say("pipeline: the local stack, put → VehicleClassified")
        # Three repeats, so that the median is one run's and not the mean of two: the capacity of one burst moved
        # from 11.4 to 21.4 images/s within one run on this shared machine.
        found, extra = pipeline.measure(
            settings,
            routable,
            repeats=1 if quick else 3,
            single_count=5 if quick else 10,
            sustained_seconds=3.0 if quick else 6.0,
            burst_count=30 if quick else 60,
        )
        figures += found
        extras.update(extra)
    if "train" in sections:
        _say("training: the committed model's recorded times")
        figures += train_figures.measure(settings.model_path)[0]
    if {"pipeline", "cold"} <= sections:
        handlers = extras["handler_ms_p50"]
        durations = {
            "ingest": handlers["ingest"],
            "serialize": handlers["serialize"],
            "infer_http": handlers["infer"],
            "infer_lambda": extras.get("warm_infer_lambda_ms"),
            "threshold": handlers["threshold"],
            "execution": handlers["execution"],
        }
        figures += cost.measure(
            {k: (round(v, 3) if v is not None else None) for k, v in durations.items()},
            extras.get("endpoint_c16_images_per_s"),
        )

    machine["speed_check_ms_at_end"] = speed_check_ms()
    figures.sort(key=lambda entry: ORDER.index(entry.key))
    table = markdown_table(figures, machine)
    document = {
        "machine": machine,
        "suite_seconds": round(time.perf_counter() - started, 1),
        "quick": quick,
        "figures": {entry.key: entry.to_dict() for entry in figures},
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    written = [str(args.out), str(args.out.with_suffix(".md"))]
    if sections == set(SECTIONS) and not quick:
        README.write_text(with_table(README.read_text(encoding="utf-8"), table), encoding="utf-8")
        written.append(str(README))
    _say(f"wrote {', '.join(written)} in {document['suite_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
