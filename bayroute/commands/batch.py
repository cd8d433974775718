"""``bayroute batch score DIR|s3://bucket/prefix --out results.jsonl``: score a whole folder or bucket prefix.

Images are read, decoded (exactly as the workflow decodes uploads), run through the model and captured in
batches of ``--batch-size`` by ``--workers`` processes, each with its own copy of the model (``bayroute.batch``).
``--out`` gets one JSON line per image, in input order: ``{"image", "labels", "probabilities", "class",
"confidence", "model_version", "inference_id"}`` or ``{"image", "error", "detail"}``. Capture records in
SageMaker's format go to ``--capture`` (a folder, default ``capture/`` beside ``--out``, or ``s3://bucket/prefix``)
unless ``--no-capture``. S3 is reached as the handlers reach it (``AWS_ENDPOINT_URL`` and the usual credentials).
Exit code 1 when any image failed, 2 when nothing could be scored (bad model, folder or bucket).

Mount with ``app.add_typer(batch_app, name="batch")``.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from time import monotonic
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bayroute.batch import MODEL_RUN_IMAGES, BatchInputError, CaptureFiles, Target, list_images, score_images
from bayroute.config import load_settings
from bayroute.model.onnx_model import ModelFileError, OnnxClassifier

REDRAW_INTERVAL_S = 0.1

batch_app = typer.Typer(help="Score many images at once: a folder or an S3 prefix.", no_args_is_help=True)


def _s3_client() -> Any:
    from bayroute.adapters.aws import aws_client

    return aws_client("s3")


@batch_app.command("score")
def score_command(
    source: Annotated[str, typer.Argument(help="A folder (searched recursively) or s3://bucket/prefix.")],
    out: Annotated[Path, typer.Option("--out", help="Where the JSON lines go.", dir_okay=False)],
    model: Annotated[
        Path | None, typer.Option(help="ONNX model file (default: the settings' model path).", dir_okay=False)
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Decoding processes (0: decode in this process; default: one per core)."),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help=f"Images per batch: scored by one worker into one capture file (model runs of {MODEL_RUN_IMAGES}).",
        ),
    ] = 64,
    capture: Annotated[
        str | None,
        typer.Option(help="Capture records: a folder or s3://bucket/prefix (default: capture/ beside --out)."),
    ] = None,
    no_capture: Annotated[bool, typer.Option("--no-capture", help="Write no capture records.")] = False,
) -> None:
    """Classify every image of a folder or S3 prefix, in parallel and batched, into JSON lines."""
    settings = load_settings()
    console = Console(stderr=True)
    target = Target.parse(source)
    capture_target = None if no_capture else Target.parse(capture or str(out.parent / "capture"))
    needs_s3 = target.bucket is not None or (capture_target is not None and capture_target.bucket is not None)
    s3 = _s3_client() if needs_s3 else None
    decode_workers = (os.cpu_count() or 1) if workers is None else workers
    model_path = model or settings.model_path
    # Each worker process runs the model on one thread, so the workers together fill the cores; decoding
    # in this process leaves the model all of them.
    load_model = partial(OnnxClassifier, model_path, intra_op_threads=1 if decode_workers else 0)
    try:
        exclude = [out] + ([capture_target.folder] if capture_target and capture_target.folder else [])
        items = list_images(target, s3_client=s3, exclude=exclude)
    except BatchInputError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    captures = (
        CaptureFiles(capture_target, settings.names.endpoint_name, settings.names.endpoint_variant, s3_client=s3)
        if capture_target is not None
        else None
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            out.open("w", encoding="utf-8") as lines,
            Progress(
                TextColumn("[bold]scoring[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=console,
                # No refresh thread: worker processes are forked, which is safe only in a single-threaded process.
                auto_refresh=False,
            ) as progress,
        ):
            task = progress.add_task("score", total=len(items), rate="")
            last_drawn = float("-inf")

            def advance(count: int) -> None:
                nonlocal last_drawn
                elapsed = progress.tasks[task].elapsed or 0.0
                done = progress.tasks[task].completed + count
                progress.update(task, advance=count, rate=f"{done / elapsed:,.0f} images/s" if elapsed else "")
                # Drawn at most ten times a second (and once more when it stops): drawing the bar took this
                # process a millisecond each time, on cores the workers need.
                if monotonic() - last_drawn >= REDRAW_INTERVAL_S:
                    progress.refresh()
                    last_drawn = monotonic()

            summary = score_images(
                items,
                load_model,
                settings,
                lines,
                workers=decode_workers,
                batch_size=batch_size,
                bucket=target.bucket,
                capture=captures,
                progress=advance,
            )
    except ModelFileError as exc:  # raised where the model is first loaded: here or in a worker
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.failures_by_reason.items()))
    console.print(
        f"{summary.scored} scored, {summary.failed} failed{f' ({reasons})' if reasons else ''} of {summary.total} "
        f"in {summary.seconds:.1f} s ({summary.images_per_second:,.0f} images/s) → {out}"
        + (f"; {len(summary.capture_files)} capture files in {capture_target}" if capture_target else "")
    )
    if summary.failed:
        raise typer.Exit(1)
