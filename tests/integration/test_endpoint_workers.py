"""The endpoint served by several processes on one port (``bayroute.endpoint_workers``), over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bayroute.config import REPO_ROOT
from bayroute.endpoint_workers import ServerWorkers, WorkerOptions, WorkerStartError
from tests.fixtures_model import tiny_model_fixture  # noqa: F401  (pytest fixture)
from tests.hostile import encode
from tests.serve_process import first_line, serve_process

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="this platform has no SO_REUSEPORT")

RED = encode(Image.new("RGB", (32, 32), (250, 0, 0)), "PNG")


def _options(model_path: Path, port: int = 0) -> WorkerOptions:
    return WorkerOptions(
        model_path=str(model_path),
        host="127.0.0.1",
        port=port,
        max_request_bytes=1024 * 1024,
        max_pixels=4096 * 4096,
        batching=True,
        model_threads=1,
    )


@pytest.fixture(scope="module")
def workers(tiny_model_path: Path) -> Iterator[ServerWorkers]:
    with ServerWorkers(_options(tiny_model_path), 2) as running:
        yield running


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since it was listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _accepted_socket_inode(server_port: int, client_port: int) -> str:
    """The inode of the server side of the loopback connection from ``client_port`` (from /proc/net/tcp)."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if local_port == server_port and remote_port == client_port:
                return fields[9]
    raise AssertionError(f"no accepted connection from port {client_port}")


def test_every_worker_answers_and_the_kernel_spreads_connections_over_them(workers: ServerWorkers) -> None:
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs /proc to see which process accepted a connection")
    assert len(workers.pids) == 2 and all(_alive(pid) for pid in workers.pids)
    assert workers.model_version == "tiny-test-1" and workers.model_threads == 1
    owners: list[int] = []
    connections = []
    for _ in range(24):
        connection = http.client.HTTPConnection("127.0.0.1", workers.port, timeout=10)
        connection.request("POST", "/invocations", body=RED, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())[0] > 0.9  # the tiny model calls red "bicycle"
        assert connection.sock is not None
        inode = _accepted_socket_inode(workers.port, connection.sock.getsockname()[1])
        owners += [pid for pid in workers.pids if inode in _socket_inodes(pid)]
        connections.append(connection)  # kept open, so that no port (and inode) is reused before it is read
    for connection in connections:
        connection.close()
    assert len(owners) == 24  # each connection belongs to exactly one worker
    assert set(owners) == set(workers.pids)  # 24 connections all hashed to one worker: a 1 in 8 million chance


def test_a_worker_that_cannot_load_the_model_stops_the_start_and_leaves_no_process(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    server = ServerWorkers(_options(broken), 2)
    with pytest.raises(WorkerStartError, match=r"broken\.onnx"):
        server.start()
    assert server.failed() is None  # no process is left to have failed
    with pytest.raises(RuntimeError, match="not started"):
        server.port  # noqa: B018


def test_stop_ends_every_worker_and_frees_the_port(tiny_model_path: Path) -> None:
    server = ServerWorkers(_options(tiny_model_path), 2).start()
    pids, port = server.pids, server.port
    server.stop()
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_worker_whose_parent_is_gone_stops_by_itself(tiny_model_path: Path) -> None:
    # A parent killed outright (no stop()) must not leave workers holding the port.
    script = (
        "import os, sys\n"
        "from bayroute.endpoint_workers import ServerWorkers, WorkerOptions\n"
        f"options = WorkerOptions({str(tiny_model_path)!r}, '127.0.0.1', 0, 1048576, 16777216, False, 1)\n"
        "server = ServerWorkers(options, 2).start()\n"
        "print(*server.pids, flush=True)\n"
        "os._exit(0)\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pids = [int(pid) for pid in parent.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def test_bayroute_serve_with_two_workers_serves_and_stops_on_sigterm(tiny_model_path: Path) -> None:
    with serve_process(tiny_model_path, "--workers", "2", "--no-batching") as process:
        line = first_line(process)
        assert "serving model tiny-test-1" in line
        assert "2 processes, 1 model thread each, one request at a time)" in line  # threads: the workers' sessions
        port = int(line.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/invocations", body=RED, headers={"Content-Type": "image/png"})
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_bayroute_serve_refuses_a_bad_worker_count_from_sagemaker(tiny_model_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "bayroute.commands.serve", "--model", str(tiny_model_path), "--port", "0"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "SAGEMAKER_MODEL_SERVER_WORKERS": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "SAGEMAKER_MODEL_SERVER_WORKERS must be a whole number" in finished.stderr


def _worker_children(parent: int) -> list[int]:
    """The spawned server workers of ``parent`` (not multiprocessing's resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:  # gone since it was listed
            continue
        if ppid == parent and b"spawn_main" in command and b"resource_tracker" not in command:
            found.append(int(entry))
    return found


def test_bayroute_serve_stops_with_an_error_when_a_worker_dies(tiny_model_path: Path) -> None:
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs /proc to find the workers")
    with serve_process(tiny_model_path, "--workers", "2") as process:
        first_line(process)
        workers = _worker_children(process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert process.wait(timeout=20) == 1
        assert process.stderr is not None
        assert f"server worker {workers[0]} exited" in process.stderr.read()
        deadline = time.monotonic() + 10
        while _alive(workers[1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers[1])  # the other worker was stopped, not left holding the port
