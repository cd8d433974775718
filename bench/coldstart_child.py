"""One cold start of one function (run as ``python -m bench.coldstart_child``, in a fresh process).

Reads ``{"module", "function", "event", "warm_calls"}`` as JSON from stdin, imports ``module`` (a
``services.<name>.handler``), invokes its ``handler`` once with ``event`` (the in-Lambda ONNX backend loads the
model on first use, as the deployed function does), then ``warm_calls`` more times, each with a key of its own;
prints one JSON line: wall-clock stamps (``time.time()``) of the first line of this module, after the import,
after the first answer, the first answer (or its error's name) and the warm durations in milliseconds. The
environment (``AWS_ENDPOINT_URL``, ``BAYROUTE_INFERENCE_BACKEND=lambda`` ...) comes from the parent.
"""

import time

started = time.time()

import copy  # noqa: E402  (the imports are what is being timed)
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402


def _with_key(event: dict[str, Any], suffix: str) -> dict[str, Any]:
    """``event`` about another object key, so that a warm call is not a repeat of the first one."""
    warm = copy.deepcopy(event)
    if isinstance(warm.get("request"), dict):
        warm["request"]["key"] = f"{warm['request']['key']}{suffix}"
    return warm


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    handler = importlib.import_module(job["module"]).handler

    imported = time.time()
    from bayroute.local.lambda_api import LambdaContext, LocalFunction

    context = LambdaContext(LocalFunction(job["function"], handler))
    try:
        answer, error = handler(job["event"], context), None
    except Exception as exc:  # an error answer is an answer too: the cold start is what is measured
        answer, error = None, type(exc).__name__
    answered = time.time()
    warm = []
    for index in range(int(job.get("warm_calls", 0))):
        call_started = time.perf_counter()
        handler(_with_key(job["event"], f"-warm-{index}"), context)
        warm.append((time.perf_counter() - call_started) * 1000.0)
    report = {"started": started, "imported": imported, "answered": answered, "answer": answer, "error": error}
    print(json.dumps({**report, "warm_ms": warm}))


if __name__ == "__main__":
    main()
