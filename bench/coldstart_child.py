"""One cold start of the infer function (run as ``python -m bench.coldstart_child``, in a fresh process).

Imports the handler, invokes it once with the in-Lambda ONNX backend (which loads the model on first use,
as the deployed function does), then invokes it ``BENCH_WARM_CALLS`` more times; prints one JSON line:
wall-clock stamps (``time.time()``) of the first line of this module, after the import, after the first
answer, and the warm durations in milliseconds. The environment (``AWS_ENDPOINT_URL``,
``BAYROUTE_INFERENCE_BACKEND=lambda`` ...) comes from the parent.
"""

import time

started = time.time()

import base64  # noqa: E402  (the imports are what is being timed)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def _event(png: bytes, key: str) -> dict[str, object]:
    return {
        "request": {
            "bucket": "bayroute-inbox",
            "key": key,
            "etag": "0123456789abcdef0123456789abcdef",
            "size": len(png),
            "version_id": None,
            "attempt": 1,
            "received_at": "2026-01-01T00:00:00.000Z",
        },
        "image": {"content_type": "image/png", "encoding": "base64", "data": base64.b64encode(png).decode("ascii")},
        "input_stats": {},
    }


def main() -> None:
    png = sys.stdin.buffer.read()
    from services.infer.handler import handler

    imported = time.time()
    from bayroute.local.lambda_api import LambdaContext, LocalFunction

    context = LambdaContext(LocalFunction(os.environ.get("BAYROUTE_INFER_FUNCTION", "bayroute-infer"), handler))
    first = handler(_event(png, "cold/0.png"), context)
    answered = time.time()
    warm = []
    for index in range(int(os.environ.get("BENCH_WARM_CALLS", "0"))):
        call_started = time.perf_counter()
        handler(_event(png, f"cold/{index + 1}.png"), context)
        warm.append((time.perf_counter() - call_started) * 1000.0)
    print(
        json.dumps(
            {
                "started": started,
                "imported": imported,
                "answered": answered,
                "model_version": first["model_version"],
                "warm_ms": warm,
            }
        )
    )


if __name__ == "__main__":
    main()
