"""Cold start of the infer function with the in-Lambda ONNX backend: a fresh process to its first answer.

Each repeat starts ``python -m bench.coldstart_child`` (a new interpreter: nothing imported, nothing cached
but the OS file cache, as on a Lambda host that ran the function before) with
``BAYROUTE_INFERENCE_BACKEND=lambda``, pointed at a moto server in this process for its capture write. The
figure runs from just before the process is spawned to the moment the handler returned its first answer;
the breakdown separates interpreter start, the handler's imports, and the first invocation (model load,
inference, capture record). The last repeat also times warm invocations, for the cost figures.

The first-party code is byte-compiled first, as the deployment package ships it (``infra/package.py``): the
children run with whatever ``PYTHONDONTWRITEBYTECODE`` says, and would otherwise compile every bayroute module
from source on each start, which no deployed function does.
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bayroute.config import REPO_ROOT, Settings
from bench.figures import Figure, figure

GOAL_MS = 250.0
WARM_CALLS = 30


def measure(settings: Settings, png: bytes, repeats: int) -> tuple[list[Figure], dict[str, Any]]:
    import boto3
    from moto.server import ThreadedMotoServer

    for package in ("bayroute", "services"):
        compileall.compile_dir(REPO_ROOT / package, quiet=1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client(
            "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local"
        ).create_bucket(Bucket=settings.names.capture_bucket)
        env = {
            **os.environ,
            **settings.to_env(),
            "BAYROUTE_INFERENCE_BACKEND": "lambda",
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO_ROOT),
        }
        runs: list[dict[str, float]] = []
        warm: list[float] = []
        for index in range(repeats):
            env["BENCH_WARM_CALLS"] = str(WARM_CALLS if index == repeats - 1 else 0)
            spawned = time.time()
            done = subprocess.run(
                [sys.executable, "-m", "bench.coldstart_child"],
                input=png,
                capture_output=True,
                env=env,
                cwd=REPO_ROOT,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"cold start child failed: {done.stderr.decode(errors='replace')[-2000:]}")
            report = json.loads(done.stdout.decode().strip().splitlines()[-1])
            runs.append(
                {
                    "total_ms": (report["answered"] - spawned) * 1000.0,
                    "interpreter_ms": (report["started"] - spawned) * 1000.0,
                    "import_ms": (report["imported"] - report["started"]) * 1000.0,
                    "first_invoke_ms": (report["answered"] - report["imported"]) * 1000.0,
                }
            )
            warm.extend(report["warm_ms"])
    finally:
        server.stop()

    totals = [run["total_ms"] for run in runs]
    breakdown = {key: round(float(np.median([run[key] for run in runs])), 1) for key in runs[0]}
    cold = figure(
        "cold_start_infer_ms",
        "cold start of infer (in-Lambda ONNX backend): fresh process → first answer",
        totals,
        "ms",
        goal=f"≤ {GOAL_MS:.0f} ms",
        met=float(np.median(totals)) <= GOAL_MS,
        details={"median_breakdown_ms": breakdown, "warm_invoke_p50_ms": round(float(np.median(warm)), 2)},
        digits=1,
    )
    return [cold], {"warm_infer_lambda_ms": float(np.median(warm)) if warm else None}
