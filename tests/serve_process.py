"""``bayroute serve`` as a child process, the way the SageMaker container starts it: for the endpoint tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bayroute.config import REPO_ROOT


@contextmanager
def serve_process(model_path: Path, *options: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m bayroute.commands.serve --model MODEL --port 0 OPTIONS...``, killed on exit if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bayroute.commands.serve", "--model", str(model_path), "--port", "0", *options],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def first_line(process: subprocess.Popen[str]) -> str:
    """The server's first line ("serving model ... on URL"), or the line and its errors in the failure message."""
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    if not line.startswith("serving model"):
        raise AssertionError(line + process.stderr.read())
    return line
