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
from bayroute.model.onnx_model import ModelFileError, OnnxClassifier
from bayroute.serving import server_model_threads


def serve_command(
    model: Annotated[
        Path | None, typer.Option(help="ONNX model file (default: the settings' model path).", dir_okay=False)
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: the settings' endpoint host).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default: the settings' endpoint port; 0: any free).")
    ] = None,
    batching: Annotated[
        bool, typer.Option("--batching/--no-batching", help="Run concurrent requests as shared model batches.")
    ] = False,
    model_threads: Annotated[
        int | None,
        typer.Option(
            "--model-threads",
            min=0,
            help="ONNX Runtime intra-op threads (default: every core but one, which the server keeps; "
            "0: ONNX Runtime's default, one per core).",
        ),
    ] = None,
) -> None:
    """Serve the model with the SageMaker container contract: GET /ping, POST /invocations."""
    settings = load_settings()
    threads = server_model_threads() if model_threads is None else model_threads
    try:
        classifier = OnnxClassifier(model or settings.model_path, intra_op_threads=threads)
    except ModelFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    server = ModelServer(
        classifier,
        settings.endpoint_host if host is None else host,
        settings.endpoint_port if port is None else port,
        max_request_bytes=settings.limits.max_request_bytes,
        max_pixels=settings.limits.max_image_pixels,
        batching=batching,
    )
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        count = classifier.intra_op_threads
        threads_text = "ONNX Runtime's default threads" if count == 0 else f"{count} model thread{'s' * (count != 1)}"
        typer.echo(f"serving model {classifier.model_version} ({classifier.path}, {threads_text}) on {server.url}")
        # A bounded wait keeps the main thread responsive to signals on every platform.
        while not stopping.wait(0.5):
            pass
        typer.echo("stopping: finishing requests in progress")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    typer.run(serve_command)


if __name__ == "__main__":
    main()
