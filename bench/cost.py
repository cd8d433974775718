"""Cost per million routed images on AWS, for each inference backend, from the durations measured in this run.

Prices are the public on-demand us-east-1 prices that the README's "What it costs" lists (the SageMaker
hourly price is read from there); request counts per image are that section's table. Durations are the median handler
durations measured on this machine's local stack (x86, shared) and stand in for Lambda arm64 durations;
memory sizes are those of the AWS template (``infra/build_template.py``). Every term is written out in
``details.arithmetic`` next to the figure.
"""

from __future__ import annotations

import math
import re

from bayroute.config import REPO_ROOT, load_settings
from bench.figures import Figure, figure

# Where the deploy documentation states its prices (it moved from docs/deploy.md into the README).
PRICE_DOCS = (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "deploy.md")
LAMBDA_GB_SECOND = 0.0000133334  # arm64
LAMBDA_PER_MILLION_REQUESTS = 0.20
EXPRESS_PER_MILLION = 1.00
EXPRESS_GB_SECOND = 0.00001667  # billed in 64 MB and 100 ms units
S3_PUT_PER_THOUSAND = 0.005
S3_GET_PER_THOUSAND = 0.0004
SQS_PER_MILLION = 0.40
EVENTBRIDGE_PER_MILLION = 1.00
DYNAMODB_PER_MILLION_WRU = 0.625
HOURS_PER_MONTH = 730
MILLION = 1_000_000
# Memory (GB) as the template sets it.
MEMORY_GB = {"ingest": 0.25, "serialize": 1.0, "infer_lambda": 1.0, "infer_sagemaker": 0.25, "threshold": 0.25}
# Durations the figures need (ms): ingest per message, the tasks, infer with either backend, one execution.
DURATION_KEYS = ("ingest", "serialize", "infer_http", "infer_lambda", "threshold", "execution")


def requests_per_image(ingest_batch_size: int) -> dict[str, float]:
    """Requests per routed image (the README's cost section): S3 PUT upload + capture + result record (created,
    then marked published); S3 GET ingest + serialize + monitor; SQS EventBridge→queue + one receive and one
    delete per ingest batch + →outcomes; EventBridge VehicleClassified; DynamoDB idempotency write + complete;
    Lambda serialize + infer + threshold + one ingest invocation per batch."""
    per_batch = 1.0 / ingest_batch_size
    return {
        "s3_put": 4,
        "s3_get": 3,
        "sqs": 2 + 2 * per_batch,
        "eventbridge": 1,
        "dynamodb_wru": 2,
        "lambda": 3 + per_batch,
    }


# The ingest batch is the settings' (the template's event source mapping): 2.2 SQS and 3.1 Lambda requests at 10.
REQUESTS = requests_per_image(load_settings(env={}).ingest_batch_size)


def sagemaker_hourly_price() -> tuple[float, str]:
    for document in PRICE_DOCS:
        text = document.read_text(encoding="utf-8") if document.is_file() else ""
        match = re.search(r"ml\.c7g\.large ≈ \$([0-9.]+) per hour", text)
        if match is not None:
            return float(match.group(1)), f"{document.relative_to(REPO_ROOT)}: ml.c7g.large ${match.group(1)}/hour"
    raise RuntimeError(f"none of {[str(d) for d in PRICE_DOCS]} states the ml.c7g.large hourly price")


def _requests_cost() -> tuple[float, list[str]]:
    terms = {
        "S3 PUT": REQUESTS["s3_put"] * S3_PUT_PER_THOUSAND * 1000,
        "S3 GET": REQUESTS["s3_get"] * S3_GET_PER_THOUSAND * 1000,
        "SQS": REQUESTS["sqs"] * SQS_PER_MILLION,
        "EventBridge": REQUESTS["eventbridge"] * EVENTBRIDGE_PER_MILLION,
        "DynamoDB": REQUESTS["dynamodb_wru"] * DYNAMODB_PER_MILLION_WRU,
        "Step Functions Express requests": EXPRESS_PER_MILLION,
        "Lambda requests": REQUESTS["lambda"] * LAMBDA_PER_MILLION_REQUESTS,
    }
    lines = [f"{name}: ${value:.2f}" for name, value in terms.items()]
    return sum(terms.values()), lines


def _lambda_term(name: str, memory_gb: float, duration_ms: float) -> tuple[float, str]:
    cost = MILLION * memory_gb * duration_ms / 1000.0 * LAMBDA_GB_SECOND
    return cost, f"{name}: 1M × {memory_gb} GB × {duration_ms / 1000:.4f} s × ${LAMBDA_GB_SECOND} = ${cost:.3f}"


def _express_term(execution_ms: float) -> tuple[float, str]:
    billed_s = math.ceil(execution_ms / 100.0) / 10.0
    cost = MILLION * 0.0625 * billed_s * EXPRESS_GB_SECOND
    return cost, (
        f"Express duration: 1M × 0.0625 GB × {billed_s:.1f} s (measured {execution_ms:.0f} ms, rounded up to 100 ms) "
        f"× ${EXPRESS_GB_SECOND} = ${cost:.3f}"
    )


def measure(durations_ms: dict[str, float | None], endpoint_images_per_s: float | None) -> list[Figure]:
    """``durations_ms``: ingest (per message), serialize, infer_http, threshold, execution, infer_lambda."""
    measured = all(durations_ms.get(key) is not None for key in DURATION_KEYS)
    requests, request_lines = _requests_cost()
    hourly, price_source = sagemaker_hourly_price()

    def value(key: str) -> float:
        return float(durations_ms.get(key) or 0.0)

    shared = [
        _lambda_term("ingest (per message)", MEMORY_GB["ingest"], value("ingest")),
        _lambda_term("serialize", MEMORY_GB["serialize"], value("serialize")),
        _lambda_term("threshold", MEMORY_GB["threshold"], value("threshold")),
        _express_term(value("execution")),
    ]
    lambda_infer = _lambda_term("infer, ONNX in the function", MEMORY_GB["infer_lambda"], value("infer_lambda"))
    sagemaker_infer = _lambda_term("infer, calling the endpoint", MEMORY_GB["infer_sagemaker"], value("infer_http"))
    instance_month = hourly * HOURS_PER_MONTH
    lambda_total = requests + sum(c for c, _ in shared) + lambda_infer[0]
    sagemaker_total = requests + sum(c for c, _ in shared) + sagemaker_infer[0] + instance_month
    capacity = endpoint_images_per_s * 3600 * HOURS_PER_MONTH if endpoint_images_per_s else None
    common_lines = [f"requests ${requests:.2f} = " + " + ".join(request_lines), *[line for _, line in shared]]
    goal = "computed from durations measured in this run (no cost goal)"
    lambda_figure = figure(
        "cost_per_million_usd_lambda",
        "AWS cost per million routed images, infer backend lambda (ONNX in the function)",
        [lambda_total],
        "USD",
        goal=goal,
        met=measured,
        details={
            "arithmetic": [*common_lines, lambda_infer[1], f"total ${lambda_total:.2f}"],
            "durations_ms": durations_ms,
            "memory_gb": MEMORY_GB,
            "note": "durations measured on this x86 machine stand in for Lambda arm64; CloudWatch Logs, storage, "
            "X-Ray and free tiers are left out, as in the README's cost section",
        },
        digits=2,
    )
    sagemaker_figure = figure(
        "cost_per_million_usd_sagemaker",
        "AWS cost per million routed images, infer backend sagemaker, at 1 million images a month",
        [sagemaker_total],
        "USD",
        goal=goal,
        met=measured,
        details={
            "arithmetic": [
                *common_lines,
                sagemaker_infer[1],
                f"endpoint: {HOURS_PER_MONTH} h × ${hourly}/h = ${instance_month:.2f} a month, "
                f"all of it on this million ({price_source})",
                f"total ${sagemaker_total:.2f}",
            ],
            "at_10_million_a_month": round(sagemaker_total - instance_month * 0.9, 2),
            # One instance is enough for a million a month: the endpoint measured here serves this many.
            "endpoint_capacity_per_month_at_this_machines_rate": round(capacity) if capacity else None,
            "durations_ms": durations_ms,
        },
        digits=2,
    )
    return [lambda_figure, sagemaker_figure]
