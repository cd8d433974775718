"""``bayroute serve``: the model endpoint in the foreground, until SIGTERM or SIGINT.

It is what the SageMaker container runs (``infra/endpoint/serve`` calls ``python -m bayroute.commands.serve``,
which needs only numpy, Pillow, ONNX Runtime and typer, not the rest of the CLI). Mount it with
``app.command("serve")(serve_command)``.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from bayroute.config import load_settings
from bayroute.endpoint_server import ModelServer
from bayroute.endpoint_workers import ServerWorkers, WorkerOptions, WorkerStartError, load_onnx_model, model_server
from bayroute.model.onnx_model import ModelFileError, OnnxClassifier
from bayroute.serving import server_model_threads, server_workers


def serve_command(
    model: Annotated[
        Path | None, typer.Option(help="ONNX model file (default: the settings' model path).", dir_okay=False)
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: the settings' endpoint host).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default: the settings' endpoint port; 0: any free).")
    ] = None,
    batching: Annotated[
        bool,
        typer.Option(
            "--batching/--no-batching",
            help="Run the requests that arrive together as one model batch (on by default; off: one by one).",
        ),
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes sharing the port (default: $SAGEMAKER_MODEL_SERVER_WORKERS, else one per core).",
        ),
    ] = None,
    model_threads: Annotated[
        int | None,
        typer.Option(
            "--model-threads",
            min=0,
            help="ONNX Runtime intra-op threads per process (default: the process's share of the cores but one, "
            "at least one; 0: ONNX Runtime's default, one per core).",
        ),
    ] = None,
) -> None:
    """Serve the model with the SageMaker container contract: GET /ping, POST /invocations."""
    settings = load_settings()
    try:
        processes = server_workers() if workers is None else workers
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    threads = server_model_threads(workers=processes) if model_threads is None else model_threads
    options = WorkerOptions(
        model_path=str(model or settings.model_path),
        host=settings.endpoint_host if host is None else host,
        port=settings.endpoint_port if port is None else port,
        max_request_bytes=settings.limits.max_request_bytes,
        max_pixels=settings.limits.max_image_pixels,
        batching=batching,
        model_threads=threads,
    )
    server = _SingleProcess(options) if processes == 1 else ServerWorkers(options, processes)
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except (ModelFileError, WorkerStartError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        mode = "batching" if options.batching else "one request at a time"
        layout = f"{options.model_path}, {_layout(server)}, {mode}"
        typer.echo(f"serving model {server.model_version} ({layout}) on {server.url}")
        # A bounded wait keeps the main thread responsive to signals on every platform.
        while not stopping.wait(0.5):
            failure = server.failed()
            if failure is not None:
                typer.echo(f"error: {failure}; stopping the others", err=True)
                raise typer.Exit(1)
        typer.echo("stopping: finishing requests in progress")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _SingleProcess:
    """One ``ModelServer`` in this process (``--workers 1``), with the interface of ``ServerWorkers``."""

    workers = 1

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self._server: ModelServer | None = None

    def start(self) -> None:
        self._server = model_server(load_onnx_model(self.options), self.options).start()

    @property
    def _model(self) -> OnnxClassifier:
        assert self._server is not None, "the server is not started"
        return self._server.model

    @property
    def model_version(self) -> str:
        return self._model.model_version

    @property
    def model_threads(self) -> int:
        return self._model.intra_op_threads

    @property
    def url(self) -> str:
        assert self._server is not None, "the server is not started"
        return self._server.url

    def failed(self) -> str | None:
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def _layout(server: _SingleProcess | ServerWorkers) -> str:
    """How the server runs, as read back from the running processes' ONNX Runtime sessions."""
    count = server.model_threads
    threads = "ONNX Runtime's default threads" if count == 0 else f"{count} model thread{'s' * (count != 1)}"
    if server.workers == 1:
        return threads
    return f"{server.workers} processes, {threads} each"


def main() -> None:
    typer.run(serve_command)


if __name__ == "__main__":
    main()
