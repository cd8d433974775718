"""The local event pipeline: a put into the inbox bucket → the ``VehicleClassified`` event, step by step.

The local stack runs as ``bayroute up`` runs it: the workflow process (this one: the in-process handlers behind
the Lambda Invoke API, moto's Step Functions, the dispatcher, the model endpoint, the monitor) and its AWS
process (moto's storage and messaging services). Another process puts the
images into the inbox bucket on a schedule and reads the outcomes queue (the EventBridge rule's SQS target
for ``VehicleClassified``/``ObjectDeadLettered``). An object's latency runs from the start of its put to
the moment its event reached the outcomes queue (SQS ``SentTimestamp``). Only images the model routes are
used (confidence ≥ the threshold), so every object ends in a ``VehicleClassified`` event.

Each Lambda handler is timed by wrapping the registered function's handler, and the endpoint call inside
infer by wrapping ``HttpEndpoint.invoke``; both only read the clock, so what runs is what ``bayroute up``
runs. Phases, in this order: one image a second (the latency goal), a burst (capacity: images routed per
second until the last one), a sustained rate (25 images/s). A phase that leaves objects unfinished at its
timeout ends the run: its backlog would spill into the next phase.

Beside them, the same burst in fresh stacks of both shapes, alternating: two processes (the default) and one
(``aws_process=False``), so that what the second process buys is a ratio measured in the same run.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayroute.adapters import endpoint as endpoint_adapter
from bayroute.config import Settings
from bayroute.local.stack import LocalStack
from bayroute.serving import usable_cores
from bench.figures import Figure, cpu_seconds, figure, percentile

P50_GOAL_MS = 100.0
P99_GOAL_MS = 1000.0
THROUGHPUT_GOAL = 25.0
# How long a phase waits for its last outcome after its last put.
PHASE_TIMEOUT_S = 45.0
# Puts in flight at once. Drivers arrive independently, so one slow upload must not hold back the next: with
# one put at a time, a busy stack answered each in about 80 ms and the load generator, not the pipeline, set
# the pace (11 puts/s in a burst).
PUTTERS = 8
# The outcome reader's pause after a receive that did not fill a batch.
COLLECT_PAUSE_S = 0.5
STEP_NAMES = (
    "event_delivery",
    "ingest_and_start",
    "serialize",
    "serialize_to_infer",
    "infer_without_endpoint",
    "endpoint",
    "infer_to_threshold",
    "threshold_and_event",
)


@dataclass
class Timings:
    """Wall-clock stamps (``time.time()``) per object key, written from the stack's threads."""

    starts: dict[tuple[str, str], float] = field(default_factory=dict)
    ends: dict[tuple[str, str], float] = field(default_factory=dict)
    endpoint_ms: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _keys_of(step: str, event: Any) -> list[str]:
    if step == "ingest":
        keys = []
        for record in event.get("Records", []) if isinstance(event, dict) else []:
            try:
                keys.append(json.loads(record["body"])["detail"]["object"]["key"])
            except (KeyError, TypeError, ValueError):
                continue
        return keys
    try:
        return [str(event["request"]["key"])]
    except (KeyError, TypeError):
        return []


_current_key = threading.local()


def _timed(step: str, handler: Callable[[Any, Any], Any], timings: Timings) -> Callable[[Any, Any], Any]:
    @functools.wraps(handler)
    def run(event: Any, context: Any) -> Any:
        keys = _keys_of(step, event)
        started = time.time()
        _current_key.value = keys[0] if keys else None
        try:
            return handler(event, context)
        finally:
            ended = time.time()
            with timings.lock:
                for key in keys:
                    timings.starts.setdefault((step, key), started)
                    timings.ends[(step, key)] = ended

    return run


def _instrument(stack: LocalStack, timings: Timings) -> Callable[[], None]:
    names = stack.settings.names
    steps = {
        names.ingest_function: "ingest",
        names.serialize_function: "serialize",
        names.infer_function: "infer",
        names.threshold_function: "threshold",
    }
    for name, function in stack.functions.items():
        if name in steps:
            function.handler = _timed(steps[name], function.handler, timings)
    original = endpoint_adapter.HttpEndpoint.invoke

    def invoke(self: Any, body: bytes, content_type: str, *, inference_id: str | None = None) -> Any:
        answer = original(self, body, content_type, inference_id=inference_id)
        key = getattr(_current_key, "value", None)
        if key is not None:
            timings.endpoint_ms[key] = answer.latency_ms
        return answer

    endpoint_adapter.HttpEndpoint.invoke = invoke  # type: ignore[method-assign]

    def restore() -> None:
        endpoint_adapter.HttpEndpoint.invoke = original  # type: ignore[method-assign]

    return restore


# -- the load process ------------------------------------------------------------------------------------


def _put_and_collect(
    aws_url: str,
    bucket: str,
    outcomes_url: str,
    items: Sequence[tuple[str, bytes]],
    rate: float | None,
    timeout_s: float,
    results: Any,
) -> None:
    """In the load process: put ``items`` at ``rate`` per second (None: as fast as ``PUTTERS`` concurrent puts
    go), read outcomes."""
    import boto3
    from botocore.config import Config

    from bayroute.adapters.signed_s3 import Credentials, SignedS3Client

    session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1")
    sqs = session.client("sqs", endpoint_url=aws_url, config=Config(retries={"total_max_attempts": 1}))
    # This process shares the stack's two cores; the cameras that upload in production are not on its machine. So
    # the puts are signed and sent without botocore (2.5-2.8 ms of this process's CPU per image, outcomes read in
    # batches, against 4.9-6.4 with botocore's client), and the outcomes are read in batches (one receive per
    # outcome took it to 10.2-11.6 ms).
    s3 = SignedS3Client(Credentials("local", "local"), "us-east-1", aws_url)
    wanted = {key for key, _ in items}
    outcomes: dict[str, tuple[str, float]] = {}
    puts: dict[str, tuple[float, float]] = {}
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set() and not wanted <= outcomes.keys():
            messages = sqs.receive_message(
                QueueUrl=outcomes_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["SentTimestamp"]
            ).get("Messages", [])
            for message in messages:
                try:
                    event = json.loads(message["Body"])
                    key = str(event["detail"]["request"]["key"])
                except (KeyError, TypeError, ValueError):
                    continue
                sent = int(message["Attributes"]["SentTimestamp"]) / 1000.0
                outcomes.setdefault(key, (str(event.get("detail-type")), sent))
            if messages:
                sqs.delete_message_batch(
                    QueueUrl=outcomes_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
                )
            if len(messages) < 10:
                # Let outcomes gather: a latency ends at the message's SentTimestamp, not when it is read, and a
                # receive per outcome cost this process more CPU than each put.
                stop.wait(COLLECT_PAUSE_S)

    def put(key: str, body: bytes) -> None:
        started = time.time()
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/png")
        puts[key] = (started, time.time())

    collector = threading.Thread(target=collect, daemon=True)
    cpu_started = time.process_time()
    collector.start()
    with concurrent.futures.ThreadPoolExecutor(max_workers=PUTTERS) as putters:
        began = time.time()
        submitted = []
        for index, (key, body) in enumerate(items):
            if rate:
                delay = began + index / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            submitted.append(putters.submit(put, key, body))
        for future in submitted:
            future.result()  # a failed put fails the phase
    collector.join(timeout=timeout_s)
    stop.set()
    collector.join(timeout=5)
    results.put({"puts": puts, "outcomes": outcomes, "cpu_s": time.process_time() - cpu_started})


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds of another process so far; None once it is gone, or where /proc is not."""
    try:
        return cpu_seconds([pid])
    except OSError:
        return None


def _run_load(
    aws_url: str,
    bucket: str,
    outcomes_url: str,
    items: Sequence[tuple[str, bytes]],
    rate: float | None,
    timeout_s: float,
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_put_and_collect,
        args=(aws_url, bucket, outcomes_url, list(items), rate, timeout_s, results),
        name="bench-pipeline-load",
        daemon=True,
    )
    process.start()
    try:
        answer: dict[str, Any] = results.get(timeout=timeout_s + len(items) / (rate or 50) + 60)
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    return answer


# -- analysis --------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    offered_per_s: float | None
    latencies_ms: list[float]
    steps_ms: dict[str, list[float]]
    submitted: int
    routed: int
    other_outcomes: int
    missing: int
    seconds: float  # first put start → last outcome
    handler_ms: dict[str, list[float]]  # each Lambda handler's duration; "execution": serialize start → threshold end
    put_span_s: float  # first put start → last put end: the load generator keeping up with ``offered_per_s``
    # CPU seconds each process spent during the phase (the stack's two and the load generator), where measured
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_ms_per_image(self) -> dict[str, float]:
        return {name: 1000.0 * seconds / self.routed for name, seconds in self.cpu_s.items()} if self.routed else {}

    @property
    def throughput(self) -> float:
        return self.routed / self.seconds if self.seconds > 0 else 0.0

    @property
    def puts_per_s(self) -> float:
        return self.submitted / self.put_span_s if self.put_span_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "offered_per_s": self.offered_per_s,
            "submitted": self.submitted,
            "routed": self.routed,
            "other_outcomes": self.other_outcomes,
            "missing": self.missing,
            "p50_ms": round(percentile(self.latencies_ms, 50), 1),
            "p99_ms": round(percentile(self.latencies_ms, 99), 1),
            "images_per_s": round(self.throughput, 2),
            "puts_per_s": round(self.puts_per_s, 2),
            "steps_p50_ms": {k: round(percentile(v, 50), 2) for k, v in self.steps_ms.items() if v},
            "steps_p99_ms": {k: round(percentile(v, 99), 2) for k, v in self.steps_ms.items() if v},
            "handlers_p50_ms": {k: round(percentile(v, 50), 2) for k, v in self.handler_ms.items() if v},
            "cpu_ms_per_image": {k: round(v, 1) for k, v in self.cpu_ms_per_image.items()},
        }


def _phase(name: str, rate: float | None, load: dict[str, Any], timings: Timings) -> Phase:
    puts: dict[str, tuple[float, float]] = load["puts"]
    outcomes: dict[str, tuple[str, float]] = load["outcomes"]
    latencies: list[float] = []
    steps: dict[str, list[float]] = {step: [] for step in STEP_NAMES}
    handlers: dict[str, list[float]] = {name: [] for name in ("ingest", "serialize", "infer", "threshold", "execution")}
    routed = other = 0
    last = 0.0
    with timings.lock:
        starts, ends, endpoint_ms = dict(timings.starts), dict(timings.ends), dict(timings.endpoint_ms)
    for key, (put_started, _) in puts.items():
        if key not in outcomes:
            continue
        kind, sent = outcomes[key]
        last = max(last, sent)
        if kind != "VehicleClassified":
            other += 1
            continue
        routed += 1
        latencies.append((sent - put_started) * 1000.0)
        stamps = [
            put_started,
            starts.get(("ingest", key)),
            starts.get(("serialize", key)),
            ends.get(("serialize", key)),
            starts.get(("infer", key)),
            ends.get(("infer", key)),
            starts.get(("threshold", key)),
            sent,
        ]
        for name in ("ingest", "serialize", "infer", "threshold"):
            if (name, key) in starts and (name, key) in ends:
                handlers[name].append((ends[(name, key)] - starts[(name, key)]) * 1000.0)
        if ("threshold", key) in ends and ("serialize", key) in starts:
            handlers["execution"].append((ends[("threshold", key)] - starts[("serialize", key)]) * 1000.0)
        if any(stamp is None for stamp in stamps) or key not in endpoint_ms:
            continue
        t0, t1, t2, t3, t4, t5, t6, t8 = (float(s) for s in stamps)  # type: ignore[arg-type]
        endpoint_s = endpoint_ms[key] / 1000.0
        parts = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4 - endpoint_s, endpoint_s, t6 - t5, t8 - t6)
        for step, seconds in zip(STEP_NAMES, parts, strict=True):
            steps[step].append(seconds * 1000.0)
    first = min((started for started, _ in puts.values()), default=0.0)
    return Phase(
        name=name,
        offered_per_s=rate,
        latencies_ms=latencies,
        steps_ms=steps,
        submitted=len(puts),
        routed=routed,
        other_outcomes=other,
        missing=len(puts) - sum(1 for key in puts if key in outcomes),
        seconds=max(0.0, last - first),
        handler_ms=handlers,
        put_span_s=max((ended for _, ended in puts.values()), default=first) - first,
    )


def _stack_cpu_s(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of the stack's processes: this one (the workflow process) and its AWS process."""
    spent = {"workflow_process": time.process_time()}
    pid = stack.aws_process_id
    aws = None if pid is None else process_cpu_s(pid)
    if aws is not None:
        spent["aws_process"] = aws
    return spent


def _burst_in_fresh_stack(
    settings: Settings, items: Callable[[int, str], list[tuple[str, bytes]]], burst_count: int, *, aws_process: bool
) -> float | None:
    """Images/s routed from one burst in a new stack of the given shape; None if an object got no outcome."""
    with LocalStack(settings, aws_process=aws_process) as stack:
        assert stack.resources is not None
        url, bucket, outcomes_url = (
            stack.aws_endpoint_url,
            settings.names.inbox_bucket,
            stack.resources.outcomes_queue_url,
        )
        _run_load(url, bucket, outcomes_url, items(3, "shape-warmup"), 2.0, timeout_s=30.0)
        load = _run_load(url, bucket, outcomes_url, items(burst_count, "shape"), None, timeout_s=PHASE_TIMEOUT_S)
    phase = _phase("shape", None, load, Timings())
    return phase.throughput if phase.missing == 0 else None


def _compare_stack_shapes(
    settings: Settings, items: Callable[[int, str], list[tuple[str, bytes]]], *, repeats: int, burst_count: int
) -> dict[str, Any]:
    """Bursts in fresh two-process and one-process stacks, alternating which goes first."""
    two: list[float | None] = []
    one: list[float | None] = []
    for repeat in range(repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        for aws_process in order:
            rate = _burst_in_fresh_stack(settings, items, burst_count, aws_process=aws_process)
            (two if aws_process else one).append(rate)
    ratios = [a / b for a, b in zip(two, one, strict=True) if a is not None and b is not None and b > 0]
    return {
        "burst": burst_count,
        "two_processes_images_per_s": [None if r is None else round(r, 2) for r in two],
        "one_process_images_per_s": [None if r is None else round(r, 2) for r in one],
        "ratio_per_pair": [round(r, 3) for r in ratios],
        "median_ratio": round(float(np.median(ratios)), 3) if ratios else None,
    }


def _cpu_ceiling(bursts: Sequence[Phase]) -> dict[str, Any]:
    """The bursts' CPU per image, process by process (medians), and the rate at which that CPU would fill every
    usable core: the hardware limit this stack and load generator can reach on this machine."""
    names = sorted({name for phase in bursts for name in phase.cpu_s})
    per_image = {
        name: float(np.median([phase.cpu_ms_per_image[name] for phase in bursts if name in phase.cpu_s]))
        for name in names
    }
    if not per_image:
        return {}
    cores = usable_cores()
    return {
        "burst_cpu_ms_per_image": {name: round(ms, 1) for name, ms in per_image.items()},
        "cpu_ceiling_images_per_s": round(cores * 1000.0 / sum(per_image.values()), 1),
        "cpu_ceiling_cores": cores,
    }


def measure(
    settings: Settings,
    routable_pngs: Sequence[bytes],
    *,
    repeats: int,
    single_count: int,
    sustained_seconds: float,
    burst_count: int,
) -> tuple[list[Figure], dict[str, Any]]:
    timings = Timings()
    phases: dict[str, list[Phase]] = {"one_per_second": [], "sustained": [], "burst": []}
    counter = iter(range(10**9))
    aborted = False

    def items(count: int, tag: str) -> list[tuple[str, bytes]]:
        return [(f"bench/{tag}-{next(counter):05d}.png", routable_pngs[i % len(routable_pngs)]) for i in range(count)]

    started = time.perf_counter()
    with LocalStack(settings) as stack:
        startup_s = time.perf_counter() - started
        restore = _instrument(stack, timings)
        try:
            assert stack.resources is not None
            url, bucket = stack.aws_endpoint_url, settings.names.inbox_bucket
            outcomes_url = stack.resources.outcomes_queue_url

            def run(name: str, count: int, rate: float | None) -> bool:
                """One phase; False when objects were still unfinished at its timeout (the stack is backlogged)."""
                before = _stack_cpu_s(stack)
                load = _run_load(url, bucket, outcomes_url, items(count, name), rate, timeout_s=PHASE_TIMEOUT_S)
                after = _stack_cpu_s(stack)
                phase = _phase(name, rate, load, timings)
                phase.cpu_s = {process: after[process] - spent for process, spent in before.items() if process in after}
                phase.cpu_s["load_process"] = float(load["cpu_s"])
                phases[name].append(phase)
                return phase.missing == 0

            _run_load(url, bucket, outcomes_url, items(3, "warmup"), 2.0, timeout_s=30.0)
            for _ in range(repeats):
                # A backlog would spill into the next phase's numbers: stop at the first phase that left one.
                if not (
                    run("one_per_second", single_count, 1.0)
                    and run("burst", burst_count, None)
                    and run("sustained", int(THROUGHPUT_GOAL * sustained_seconds), THROUGHPUT_GOAL)
                ):
                    aborted = True
                    break
        finally:
            restore()

    single, sustained, burst = phases["one_per_second"], phases["sustained"], phases["burst"]
    p50s = [percentile(p.latencies_ms, 50) for p in single]
    p99s = [percentile(p.latencies_ms, 99) for p in sustained]
    capacity = [p.throughput for p in burst]
    lost = sum(p.missing for runs in phases.values() for p in runs)
    details = {
        "stack_startup_s": round(startup_s, 2),
        "phases": {name: [p.summary() for p in runs] for name, runs in phases.items()},
        "objects_without_outcome": lost,
        "stopped_early": aborted,
        "latency": "put start → VehicleClassified in the outcomes queue (SQS SentTimestamp)",
    }
    p50_figure = figure(
        "pipeline_latency_p50_ms",
        "pipeline latency p50 at 1 image/s, put → VehicleClassified",
        p50s,
        "ms",
        goal=f"≤ {P50_GOAL_MS:.0f} ms",
        met=bool(p50s) and float(np.median(p50s)) <= P50_GOAL_MS and not lost,
        details=details,
        digits=1,
    )
    p99_figure = figure(
        "pipeline_latency_p99_ms",
        f"pipeline latency p99 at {THROUGHPUT_GOAL:.0f} images/s offered",
        p99s,
        "ms",
        goal=f"≤ {P99_GOAL_MS:,.0f} ms at {THROUGHPUT_GOAL:.0f} images/s",
        met=bool(p99s) and float(np.median(p99s)) <= P99_GOAL_MS and not lost,
        details={"achieved_images_per_s": [round(p.throughput, 2) for p in sustained]},
        digits=1,
    )
    sustained_ok = bool(p99s) and float(np.median(p99s)) <= P99_GOAL_MS
    throughput_figure = figure(
        "pipeline_throughput",
        f"pipeline capacity, images/s routed from a burst of {burst_count}",
        capacity,
        "images/s",
        goal=f"≥ {THROUGHPUT_GOAL:.0f} images/s sustained with p99 ≤ {P99_GOAL_MS:,.0f} ms",
        met=bool(capacity) and float(np.median(capacity)) >= THROUGHPUT_GOAL and sustained_ok and not lost,
        details={"sustained_achieved_images_per_s": [round(p.throughput, 2) for p in sustained]},
        digits=2,
    )
    throughput_figure.details.update(_cpu_ceiling(burst))
    shapes = _compare_stack_shapes(settings, items, repeats=repeats, burst_count=burst_count)
    throughput_figure.details["one_process_side_by_side"] = shapes
    # What one image costs each handler when the stack is not queueing: the input of the cost figures.
    handler_p50 = {
        name: percentile([ms for phase in single for ms in phase.handler_ms[name]], 50)
        for name in ("ingest", "serialize", "infer", "threshold", "execution")
    }
    return [p50_figure, p99_figure, throughput_figure], {"handler_ms_p50": handler_p50}
