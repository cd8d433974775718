"""Cold starts of every function: a fresh process, importing the handler, to its first answer.

Each repeat walks one image through the functions the way the workflow does, each function in a fresh
``python -m bench.coldstart_child`` (a new interpreter: nothing imported, nothing cached but the OS file cache, as
on a Lambda host that ran the function before): ingest gets the inbox's S3 "Object Created" event, serialize the
workflow's request, infer (``BAYROUTE_INFERENCE_BACKEND=lambda``: ONNX Runtime in the function) serialize's
answer, threshold infer's answer, and monitor a scheduled event. They all talk to a moto server in this process,
provisioned as the local stack is (``bayroute.local.provision``), so every call they make is answered. The figure
is infer's, with the in-Lambda backend; each cold start runs from just before the process is spawned to the
moment the handler returned its first answer, and its breakdown separates interpreter start, the handler's
imports, and the first invocation (clients, model load, the work itself). The last repeat also times warm
invocations of infer, for the cost figures.

After each infer cold start, ``python -m bench.coldstart_floor`` measures the floor under it: a fresh process that
only imports numpy and ONNX Runtime and loads the model, which any in-Lambda ONNX function must do before
answering. The details give its breakdown and infer's time over it, and beside it the floor of the design
before infer signed its capture write itself: the same process importing botocore and creating an S3 client too.

The first-party code is byte-compiled first, as the deployment package ships it (``infra/package.py``): the
children run with whatever ``PYTHONDONTWRITEBYTECODE`` says, and would otherwise compile every bayroute module
from source on each start, which no deployed function does.
"""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from bayroute.config import REPO_ROOT, Settings
from bayroute.domain import utc_now
from bayroute.local.lambda_api import REGION
from bayroute.local.provision import WORKFLOW_DEFINITION
from bayroute.local.stack import local_aws_environment, reset_moto, run_state_machines
from bench.figures import Figure, figure, run_module

GOAL_MS = 250.0
WARM_CALLS = 30
FUNCTIONS = ("ingest", "serialize", "infer", "threshold", "monitor")


def measure(settings: Settings, png: bytes, repeats: int) -> tuple[list[Figure], dict[str, Any]]:
    """``png`` must be an image the model routes, so that threshold's first answer is a routing."""
    from moto.server import ThreadedMotoServer

    for package in ("bayroute", "services"):
        compileall.compile_dir(REPO_ROOT / package, quiet=1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in FUNCTIONS}
    floors: list[dict[str, float]] = []
    botocore_floors: list[dict[str, float]] = []
    warm: list[float] = []
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        # moto's backends and settings belong to the whole process: a local stack that ran before may have left
        # its interpreter on, and an execution that ingest starts here must stay a record, not run (and
        # dead-letter) in the background after this server has stopped.
        run_state_machines(url, False)
        s3 = _provision(settings, url)
        states = json.loads(WORKFLOW_DEFINITION.read_text(encoding="utf-8"))["States"]
        env = {
            **os.environ,
            **settings.to_env(),
            "BAYROUTE_INFERENCE_BACKEND": "lambda",
            **local_aws_environment(url),
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO_ROOT),
        }
        for index in range(repeats):
            key = f"cold/{index}.png"
            stored = s3.put_object(Bucket=settings.names.inbox_bucket, Key=key, Body=png)
            request = {
                "bucket": settings.names.inbox_bucket,
                "key": key,
                "etag": stored["ETag"].strip('"'),
                "size": len(png),
                "version_id": stored.get("VersionId"),
                "attempt": 1,
                "received_at": utc_now(),
            }
            answers: dict[str, Any] = {}
            for name in FUNCTIONS:
                warm_calls = WARM_CALLS if index == repeats - 1 and name == "infer" else 0
                report = _cold_start(name, settings, _event(name, request, answers, states), env, warm_calls)
                if report["error"] is not None or (name == "ingest" and report["answer"].get("status") != "started"):
                    outcome = report["error"] or report["answer"]
                    raise RuntimeError(f"{name}'s first answer was not the workflow's: {outcome}")
                answers[name] = report["answer"]
                runs[name].append(report["times"])
                warm.extend(report["warm_ms"])
            floors.append(_floor(settings, env))
            botocore_floors.append(_floor(settings, env, botocore=True))
    finally:
        reset_moto(url)  # nothing of this run stays in the process's moto backends
        server.stop()

    def medians(times: list[dict[str, float]]) -> dict[str, float]:
        return {key: round(float(np.median([run[key] for run in times])), 1) for key in times[0]}

    totals = [run["total_ms"] for run in runs["infer"]]
    floor_totals = [run["total_ms"] for run in floors]
    cold = figure(
        "cold_start_infer_ms",
        "cold start of infer (in-Lambda ONNX backend): fresh process → first answer",
        totals,
        "ms",
        goal=f"≤ {GOAL_MS:.0f} ms",
        met=float(np.median(totals)) <= GOAL_MS,
        details={
            "median_breakdown_ms": medians(runs["infer"]),
            # The libraries alone, measured after each infer cold start: what no change to bayroute can remove.
            "floor_median_ms": medians(floors),
            "infer_over_floor_ms": round(float(np.median(totals) - np.median(floor_totals)), 1),
            "floor_share_of_goal": round(float(np.median(floor_totals)) / GOAL_MS, 2),
            # ...and with botocore's S3 client as well: the floor before the capture write was signed in infer.
            "botocore_client_floor_median_ms": medians(botocore_floors),
            "warm_invoke_p50_ms": round(float(np.median(warm)), 2),
            # Every function's cold start, measured the same way (medians over the same repeats).
            "functions_median_ms": {name: medians(runs[name]) for name in FUNCTIONS},
        },
        digits=1,
    )
    return [cold], {"warm_infer_lambda_ms": float(np.median(warm)) if warm else None}


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _provision(settings: Settings, url: str) -> Any:
    """Every resource of the stack on the moto server at ``url``; returns an S3 client for it."""
    import boto3

    from bayroute.local.provision import provision

    with _environment(local_aws_environment(url)):
        session = boto3.Session(region_name=REGION)
        provision(session, settings)
        return session.client("s3")


def _selected(state: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """What the workflow keeps of a function's ``answer``: its Task state's ResultSelector, whose paths all read
    ``$.Payload.<field>``."""
    return {
        field.removesuffix(".$"): answer[path.removeprefix("$.Payload.")]
        for field, path in state["ResultSelector"].items()
    }


def _event(name: str, request: dict[str, Any], answers: Mapping[str, Any], states: Mapping[str, Any]) -> dict[str, Any]:
    """What ``name`` is invoked with for the object of ``request``, built from the answers before it as the
    workflow's ``states`` build them."""
    if name == "ingest":  # the event EventBridge delivers for an upload (ingest takes it bare, too)
        return {
            "version": "0",
            "id": f"cold-{request['key']}",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "123456789012",
            "time": request["received_at"],
            "region": REGION,
            "resources": [f"arn:aws:s3:::{request['bucket']}"],
            "detail": {
                "version": "0",
                "bucket": {"name": request["bucket"]},
                "object": {
                    "key": request["key"],
                    "size": request["size"],
                    "etag": request["etag"],
                    "version-id": request["version_id"],
                },
                "reason": "PutObject",
            },
        }
    if name == "serialize":
        return {"request": request}
    if name == "infer":  # its Payload: the request and what the workflow kept of serialize's answer
        return {"request": request, **_selected(states["Serialize"], answers["serialize"])}
    if name == "threshold":
        return {"request": request, "prediction": _selected(states["Infer"], answers["infer"])}
    return {  # monitor: its schedule's event
        "version": "0",
        "id": f"cold-monitor-{request['key']}",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": request["received_at"],
        "region": REGION,
        "resources": [],
        "detail": {},
    }


def _spawn(
    module: str, args: list[str], stdin: bytes, env: Mapping[str, str], what: str
) -> tuple[float, dict[str, Any]]:
    """Run ``python -m module *args`` fresh; (the wall-clock time just before it was spawned, its last JSON line)."""
    spawned = time.time()
    return spawned, run_module(module, args, what=what, stdin=stdin, env=env)


def _floor(settings: Settings, env: Mapping[str, str], *, botocore: bool = False) -> dict[str, float]:
    """One run of ``bench.coldstart_floor``: a fresh process, from just before it is spawned to the model loaded."""
    args = [str(settings.model_path), *(["--botocore"] if botocore else [])]
    spawned, stamps = _spawn("bench.coldstart_floor", args, b"", env, "the cold start floor")
    return {
        "total_ms": (stamps["loaded"] - spawned) * 1000.0,
        "interpreter_ms": (stamps["started"] - spawned) * 1000.0,
        "import_ms": (stamps["imported"] - stamps["started"]) * 1000.0,
        "s3_client_ms": (stamps["client"] - stamps["imported"]) * 1000.0,
        "model_load_ms": (stamps["loaded"] - stamps["client"]) * 1000.0,
    }


def _cold_start(
    name: str, settings: Settings, event: dict[str, Any], env: Mapping[str, str], warm_calls: int
) -> dict[str, Any]:
    job = {
        "module": f"services.{name}.handler",
        "function": getattr(settings.names, f"{name}_function"),
        "event": event,
        "warm_calls": warm_calls,
    }
    spawned, report = _spawn("bench.coldstart_child", [], json.dumps(job).encode(), env, f"cold start of {name}")
    report["times"] = {
        "total_ms": (report["answered"] - spawned) * 1000.0,
        "interpreter_ms": (report["started"] - spawned) * 1000.0,
        "import_ms": (report["imported"] - report["started"]) * 1000.0,
        "first_invoke_ms": (report["answered"] - report["imported"]) * 1000.0,
    }
    return report
