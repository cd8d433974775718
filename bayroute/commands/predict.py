"""``bayroute predict IMAGE...``: classify image files with the ONNX model in this process.

Each file is decoded exactly as the workflow decodes an uploaded object (``bayroute.imaging``: format by
content, pixel limit, EXIF, any mode to RGB) and must fit the object size limit. With ``--json`` it
prints one JSON line per image, ``{"image", "labels", "probabilities", "class", "confidence",
"model_version"}`` or ``{"image", "error", "detail"}``; otherwise a table. Exit code 1 when any image
failed. Mount with ``app.command("predict")(predict_command)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bayroute.config import Settings, load_settings
from bayroute.errors import ObjectMissing, TooLarge, WorkflowError
from bayroute.imaging import prepare_image
from bayroute.model.onnx_model import ModelFileError, OnnxClassifier


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ObjectMissing(f"{path} is a folder, not a file")
        if size > max_bytes:
            raise TooLarge(f"{path} has {size} bytes, over the limit of {max_bytes}", bytes=size)
        return path.read_bytes()
    except OSError as exc:
        raise ObjectMissing(f"cannot read {path}: {exc.strerror or exc}") from exc


def predict_files(paths: list[Path], classifier: OnnxClassifier, settings: Settings) -> list[dict[str, Any]]:
    """One result per path, in order: the prediction, or the error that stopped it."""
    height, width = classifier.input_size
    if height != width:
        raise ModelFileError(f"{classifier.path}: input size {height}x{width} is not square")
    results: list[dict[str, Any]] = []
    prepared: dict[int, np.ndarray] = {}
    for index, path in enumerate(paths):
        try:
            data = _read(path, settings.limits.max_object_bytes)
            prepared[index] = prepare_image(data, size=height, max_pixels=settings.limits.max_image_pixels).array
            results.append({"image": str(path)})
        except WorkflowError as exc:
            results.append({"image": str(path), "error": exc.reason, "detail": exc.detail})
    if prepared:
        indices = list(prepared)
        probabilities = classifier.predict(np.stack([prepared[i] for i in indices]))
        for index, row in zip(indices, probabilities.tolist(), strict=True):
            top = int(np.argmax(row))
            results[index].update(
                labels=classifier.labels,
                probabilities=row,
                **{"class": classifier.labels[top]},
                confidence=row[top],
                model_version=classifier.model_version,
            )
    return results


def _table(results: list[dict[str, Any]], labels: list[str]) -> Table:
    table = Table(title="Predictions")
    table.add_column("image", overflow="fold")
    table.add_column("class")
    table.add_column("confidence", justify="right")
    for label in labels:
        table.add_column(f"p({label})", justify="right")
    for result in results:
        if "error" in result:
            failure = f"[red]{result['error']}[/red]: {escape(result['detail'])}"
            table.add_row(escape(result["image"]), failure, "", *[""] * len(labels))
        else:
            probabilities = [f"{p:.3f}" for p in result["probabilities"]]
            table.add_row(escape(result["image"]), result["class"], f"{result['confidence']:.3f}", *probabilities)
    return table


def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files; their content, not their name, sets the format.")],
    model: Annotated[
        Path | None, typer.Option(help="ONNX model file (default: the settings' model path).", dir_okay=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON line per image instead of a table.")] = False,
) -> None:
    """Classify images with the model, decoded exactly as the workflow decodes uploads."""
    settings = load_settings()
    try:
        classifier = OnnxClassifier(model or settings.model_path)
        results = predict_files(images, classifier, settings)
    except ModelFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if json_output:
        for result in results:
            typer.echo(json.dumps(result))
    else:
        Console().print(_table(results, classifier.labels))
    if any("error" in result for result in results):
        raise typer.Exit(1)
