"""The model endpoint served by several processes that share one port: a GIL per core.

One ``ModelServer`` process does its HTTP, decoding and batching under one GIL, so it uses about one core
however many the machine has; ONNX Runtime's threads are the only work beside it. SageMaker's own model
servers run one worker process per vCPU for the same reason. Measured on 2 cores at concurrency 16 (the
bench's load generator): two processes served 1,131-1,163 images/s where one served 921-940, and with a model
that costs nothing 2,703-3,051 requests/s where one served 1,908-2,196.

Each worker is a fresh interpreter (spawned: ONNX Runtime's threads do not survive ``fork``, and the parent
may run threads) that loads the model itself and binds ``host:port`` with ``SO_REUSEPORT``, so the kernel
spreads new connections over the workers. For port 0 the parent first takes an ephemeral port with a
``SO_REUSEPORT`` socket that never listens (so it receives no connection) and every worker binds that port.
Workers stop on SIGTERM, which ``stop()`` sends (requests in progress finish first), or when the parent is
gone. (Not through a multiprocessing Event: setting one waits for every process that waits on it to wake, so
a killed worker would hang the parent's ``stop()``.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bayroute.endpoint_server import ModelServer, endpoint_url

if TYPE_CHECKING:
    from bayroute.model.onnx_model import OnnxClassifier

# How long a worker may take to import, load the model and bind (a fresh interpreter: about a second).
START_TIMEOUT_SECONDS = 60.0
# How often a serving worker checks whether it was asked to stop or its parent is gone.
CHECK_SECONDS = 0.2


class WorkerStartError(RuntimeError):
    """A worker could not load the model or bind the port; the message is the worker's error."""


@dataclass(frozen=True)
class WorkerOptions:
    """What each worker needs to build its ``ModelServer`` (plain values: they cross to a spawned process)."""

    model_path: str
    host: str
    port: int
    max_request_bytes: int
    max_pixels: int
    batching: bool
    model_threads: int


@dataclass(frozen=True)
class _Ready:
    pid: int
    model_version: str
    model_threads: int


@dataclass(frozen=True)
class _Failed:
    pid: int
    error: str


def load_onnx_model(options: WorkerOptions) -> OnnxClassifier:
    """The model each worker serves by default: ``options.model_path`` on ``options.model_threads`` threads."""
    from bayroute.model.onnx_model import OnnxClassifier

    return OnnxClassifier(options.model_path, intra_op_threads=options.model_threads)


def model_server(model: OnnxClassifier, options: WorkerOptions, *, reuse_port: bool = False) -> ModelServer:
    """The ``ModelServer`` the options describe, serving ``model`` (not started)."""
    return ModelServer(
        model,
        options.host,
        options.port,
        max_request_bytes=options.max_request_bytes,
        max_pixels=options.max_pixels,
        batching=options.batching,
        reuse_port=reuse_port,
    )


def _serve(
    options: WorkerOptions,
    load_model: Callable[[WorkerOptions], OnnxClassifier],
    parent: int,
    reports: Any,
) -> None:
    """A worker process: serve until SIGTERM or until the parent is gone."""
    # Ctrl-C reaches the whole process group: the parent decides when the workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    try:
        model = load_model(options)
        server = model_server(model, options, reuse_port=True).start()
    except Exception as exc:  # handed to the parent, which stops every worker and raises it
        reports.put(_Failed(os.getpid(), str(exc) or type(exc).__name__))
        return
    reports.put(_Ready(os.getpid(), model.model_version, model.intra_op_threads))
    try:
        while not terminated and os.getppid() == parent:
            time.sleep(CHECK_SECONDS)
    finally:
        server.stop()


class ServerWorkers:
    """``workers`` processes serving one model on ``host:port``; ``start()``, ``stop()``, or a context manager.

    ``load_model`` builds each worker's model from the options; it must be a module-level function (it is
    pickled by reference into each spawned worker).
    """

    def __init__(
        self,
        options: WorkerOptions,
        workers: int,
        load_model: Callable[[WorkerOptions], OnnxClassifier] = load_onnx_model,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a server needs at least one worker process, got {workers}")
        self.options = options
        self.workers = workers
        self._load_model = load_model
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        self._port = 0
        self.model_version = ""
        self.model_threads = 0

    @property
    def port(self) -> int:
        if not self._processes:
            raise RuntimeError("the server workers are not started")
        return self._port

    @property
    def url(self) -> str:
        return endpoint_url(self.options.host, self.port)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def start(self) -> ServerWorkers:
        """Start every worker; returns once all of them listen. Raises WorkerStartError if one cannot."""
        if self._processes:
            raise RuntimeError("the server workers are already started")
        with _port_for(self.options.host, self.options.port) as port:
            self._port = port
            options = dataclasses.replace(self.options, port=port)
            reports = self._context.Queue()
            self._processes = [
                self._context.Process(
                    target=_serve,
                    args=(options, self._load_model, os.getpid(), reports),
                    name=f"bayroute-endpoint-{i}",
                )
                for i in range(self.workers)
            ]
            for process in self._processes:
                process.start()
            try:
                self._wait_until_ready(reports)
            except BaseException:
                self.stop()
                raise
        return self

    def _wait_until_ready(self, reports: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        ready: list[_Ready] = []
        while len(ready) < self.workers:
            try:
                report = reports.get(timeout=0.2)
            except queue.Empty:
                dead = self.failed()
                if dead is not None:
                    raise WorkerStartError(dead) from None
                if time.monotonic() > deadline:
                    raise WorkerStartError(
                        f"the server workers were not ready within {START_TIMEOUT_SECONDS:.0f} s"
                    ) from None
                continue
            if isinstance(report, _Failed):
                raise WorkerStartError(report.error)
            ready.append(report)
        self.model_version = ready[0].model_version
        self.model_threads = ready[0].model_threads

    def failed(self) -> str | None:
        """Why a worker is gone while the server runs (it died, or was killed), or None while all of them run."""
        for process in self._processes:
            if process.exitcode is not None:
                return f"server worker {process.pid} exited with code {process.exitcode}"
        return None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every worker: requests in progress finish (up to ``timeout``); stragglers are killed."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker finishes its requests in progress, then exits
        deadline = time.monotonic() + timeout + 5
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join()
        self._processes = []

    def __enter__(self) -> ServerWorkers:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def _port_for(host: str, port: int) -> Any:
    """``port``, or for 0 an ephemeral port held (bound, never listening) until the workers have bound it too."""
    if port != 0:
        yield port
        return
    family = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as reservation:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((host, 0))
        yield int(reservation.getsockname()[1])
