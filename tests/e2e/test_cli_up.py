"""`bayroute up` as users and other tools run it: a foreground process, a state file, SIGTERM to stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bayroute.local.runtime import state_path

pytestmark = pytest.mark.slow
BAYROUTE = [sys.executable, "-m", "bayroute.cli"]


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_processes_files_left_before_start_and_copied_while_running_then_stops_on_sigterm(
    tmp_path: Path, shared_dataset: Path
) -> None:
    bicycle, motorcycle = (sorted((shared_dataset / "train" / c).glob("*.png"))[3] for c in ("bicycle", "motorcycle"))
    (tmp_path / "inbox").mkdir()
    shutil.copy(bicycle, tmp_path / "inbox" / "left over.png")  # there before start: submitted on start
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [*BAYROUTE, "up", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_for(lambda: state_path(tmp_path).exists(), 60, "the state file")

        submitted = subprocess.run(
            [*BAYROUTE, "submit", str(motorcycle), "--workdir", str(tmp_path), "--timeout", "60"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert motorcycle.name in submitted.stdout

        _wait_for(
            lambda: any((tmp_path / d / "left over.png.json").exists() for d in ("routed", "dead-letter")),
            60,
            "the file left in the inbox before start",
        )
        status = subprocess.run(
            [*BAYROUTE, "status", "--workdir", str(tmp_path), "--json"], capture_output=True, text=True, env=env
        )
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["model_endpoint_healthy"] is True
        assert report["files"]["inbox"] == 0
        assert report["files"]["routed"] + report["files"]["dead-letter"] == 2
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "SIGTERM received" in output
    assert not state_path(tmp_path).exists()


def test_commands_that_need_a_running_stack_say_so(tmp_path: Path) -> None:
    result = subprocess.run([*BAYROUTE, "status", "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "no local stack runs in" in result.stderr


def test_up_on_a_taken_port_says_so_and_exits(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*BAYROUTE, "up", "--workdir", str(tmp_path), "--aws-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} for the local stack" in done.stderr
    assert "Traceback" not in done.stderr
    assert not state_path(tmp_path).exists()
