"""``bayroute evaluate``: the served model's accuracy, calibration and automation on a folder of labelled images.

Mount with ``app.command("evaluate")(evaluate_command)``. Images are decoded by the serving path
(``bayroute.imaging``), so the numbers are what the deployed workflow would see; torch is not needed.
``--split val`` keeps only the validation split that training held out: the same stratified split function
with the fraction and seed recorded in the model's ``training`` metadata.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bayroute.config import load_settings
from bayroute.errors import WorkflowError
from bayroute.imaging import decode_png_payload
from bayroute.model.metrics import classification_report, threshold_for_precision
from bayroute.model.onnx_model import ModelFileError, OnnxClassifier
from training.folder import FolderDataset, FolderDatasetError, load_folder_dataset
from training.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, stratified_split

BATCH_SIZE = 256


class Split(StrEnum):
    all = "all"
    val = "val"


class EvaluationError(ValueError):
    """The data cannot be evaluated with this model (unknown classes, unusable split)."""


def load_for_model(data: Path, model: OnnxClassifier, max_pixels: int) -> FolderDataset:
    """The folder's images as the model's input, decoded and resized exactly as the service does."""
    height, width = model.input_size
    if height != width:
        raise EvaluationError(f"the serving decoder makes square inputs; the model wants {height}x{width}")

    def decode(path: Path) -> np.ndarray:
        try:
            return decode_png_payload(path.read_bytes(), height, max_pixels=max_pixels)
        except WorkflowError as exc:  # a file the service would dead-letter: name its reason
            raise ValueError(f"{exc.reason}: {exc.detail}") from exc

    return load_folder_dataset(data, decode=decode)


def model_split(model: OnnxClassifier) -> tuple[float, int]:
    """The (val_fraction, split_seed) the model was trained with, or training's defaults when not recorded."""
    training = model.info.json_field("training") or {}
    config = training.get("config", {}) if isinstance(training, dict) else {}
    return float(config.get("val_fraction", DEFAULT_VAL_FRACTION)), int(config.get("split_seed", DEFAULT_SPLIT_SEED))


def evaluate(
    model: OnnxClassifier,
    dataset: FolderDataset,
    *,
    split: Split = Split.all,
    precision_target: float | None = None,
) -> dict[str, Any]:
    """The metrics report (``bayroute.model.metrics.classification_report``) of ``model`` on ``dataset``."""
    unknown = sorted(set(dataset.classes) - set(model.labels))
    if unknown:
        raise EvaluationError(f"classes {unknown} of the data are not among the model's labels {model.labels}")
    # Folder label index -> model output index: the data may hold a subset of classes, in any order.
    to_model = np.array([model.labels.index(name) for name in dataset.classes], dtype=np.int64)
    indices = np.arange(len(dataset))
    if split is Split.val:
        val_fraction, seed = model_split(model)
        _, indices = stratified_split(dataset.labels, val_fraction, seed)
    probabilities = np.concatenate(
        [model.predict(dataset.images[indices[i : i + BATCH_SIZE]]) for i in range(0, len(indices), BATCH_SIZE)]
    )
    labels = to_model[dataset.labels[indices]]
    report = {
        "model": str(model.path),
        "model_version": model.model_version,
        "split": split.value,
        **classification_report(probabilities, labels, model.labels),
    }
    if precision_target is not None:
        found = threshold_for_precision(probabilities, labels, precision_target)
        report["threshold_for_precision"] = (
            None
            if found is None
            else {"precision": precision_target, "threshold": found[0], "automation_rate": found[1]}
        )
    return report


def evaluate_command(
    data: Annotated[Path, typer.Option(help="Folder-per-class labelled images: DIR/<class>/*.png|jpg.")],
    model_path: Annotated[
        Path | None, typer.Option("--model", help="ONNX model (default: the committed default model).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    precision_target: Annotated[
        float | None,
        typer.Option(
            "--threshold-for-precision",
            max=1.0,
            help="Also find the lowest threshold reaching this precision on the data.",
        ),
    ] = None,
    split: Annotated[
        Split, typer.Option(help="all images, or only the validation split training held out.")
    ] = Split.all,
) -> None:
    """Accuracy, per-class recall, confusion matrix, NLL, ECE and automation at 0.8/0.9/0.95/0.99."""
    if precision_target is not None and precision_target <= 0.0:
        raise typer.BadParameter(f"must be in (0, 1], got {precision_target}", param_hint="--threshold-for-precision")
    settings = load_settings()
    try:
        model = OnnxClassifier(model_path or settings.model_path)
        dataset = load_for_model(data, model, settings.limits.max_image_pixels)
        report = evaluate(model, dataset, split=split, precision_target=precision_target)
    except (ModelFileError, FolderDatasetError, EvaluationError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(_human(report))


def _human(report: dict[str, Any]) -> str:
    recall = ", ".join(
        f"{name} {value:.4f}" if value is not None else f"{name} n/a"
        for name, value in report["per_class_recall"].items()
    )
    lines = [
        f"model {report['model_version']} on {report['n']} images ({report['split']})",
        f"accuracy {report['accuracy']:.4f}  NLL {report['nll']:.4f}  ECE {report['ece']:.4f}",
        f"recall: {recall}",
        f"confusion (rows true, columns predicted, {' / '.join(report['classes'])}): {report['confusion_matrix']}",
    ]
    for threshold, row in report["thresholds"].items():
        precision = "n/a" if row["precision"] is None else f"{row['precision']:.4f}"
        lines.append(f"threshold {threshold}: automation {row['automation_rate']:.4f}  precision {precision}")
    if "threshold_for_precision" in report:
        found = report["threshold_for_precision"]
        lines.append(
            "no threshold reaches the requested precision"
            if found is None
            else f"precision {found['precision']}: threshold {found['threshold']:.6f}, "
            f"automation {found['automation_rate']:.4f}"
        )
    return "\n".join(lines)
