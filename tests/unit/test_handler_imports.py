"""What importing a handler loads: cold starts pay for every module, so infer loads only what it uses.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds everything).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# asyncio: the endpoint server's transport, which the in-process backend (bayroute.serving) does without;
# botocore.session: its clients, which infer's signed capture write does without (bayroute.adapters.signed_s3).
HEAVY = [
    "aws_xray_sdk.core",
    "boto3",
    "s3transfer",
    "aws_lambda_powertools.utilities.idempotency",
    "asyncio",
    "botocore.session",
]


def _loaded_after_import(module: str, **env: str) -> dict[str, bool]:
    script = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        f"print(json.dumps({{name: name in sys.modules for name in {HEAVY!r}}}))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED"}}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, bool] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_infer_outside_lambda_loads_neither_xray_nor_botocore_clients_nor_idempotency_nor_the_http_server() -> None:
    assert _loaded_after_import("services.infer.handler") == dict.fromkeys(HEAVY, False)


@pytest.mark.parametrize("handler", ["services.serialize.handler", "services.threshold.handler"])
def test_other_steps_outside_lambda_do_not_build_the_xray_recorder(handler: str) -> None:
    assert not _loaded_after_import(handler)["aws_xray_sdk.core"]


def test_inside_lambda_the_tracer_is_xray() -> None:
    loaded = _loaded_after_import("services.infer.handler", LAMBDA_TASK_ROOT=str(REPO))
    assert loaded["aws_xray_sdk.core"]


def test_trace_disabled_inside_lambda_skips_xray() -> None:
    loaded = _loaded_after_import("services.infer.handler", LAMBDA_TASK_ROOT=str(REPO), POWERTOOLS_TRACE_DISABLED="1")
    assert not loaded["aws_xray_sdk.core"]
