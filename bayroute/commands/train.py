"""``bayroute train``: train the vehicle classifier and write ``OUT/model.onnx`` and ``OUT/MODEL_CARD.md``.

torch is imported only when the command runs, so the rest of the CLI works on installs without the
``training`` extra. Mount with ``app.command("train")(train_command)``.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from training.train import EpochStats

DEVICES = ("auto", "cpu", "cuda")


def train_command(
    data: Annotated[Path, typer.Option(help="Folder-per-class training images: DIR/<class>/*.png|jpg.")],
    out: Annotated[Path, typer.Option(help="Output folder, e.g. models/NAME (model.onnx and MODEL_CARD.md).")],
    seed: Annotated[int, typer.Option(help="Seed for initialisation, shuffling and augmentation.")] = 0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the recipe's).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    ensemble: Annotated[
        int | None, typer.Option(min=1, help="Members of the seed ensemble, seeds SEED.. (default: the recipe's).")
    ] = None,
) -> None:
    """Train with the default recipe on DATA, calibrate on its validation split and export to ONNX."""
    console = Console()
    if device not in DEVICES:
        raise typer.BadParameter(f"must be one of {', '.join(DEVICES)}", param_hint="--device")
    if not data.is_dir():
        raise typer.BadParameter(f"{data} is not a folder", param_hint="--data")
    try:
        from training.pipeline import train_and_export
        from training.train import TrainConfig
    except ImportError as exc:
        console.print(f"[red]training needs the 'training' extra (pip install 'bayroute[training]'): {exc}")
        raise typer.Exit(code=1) from exc

    recipe = TrainConfig(seed=seed)
    config = dataclasses.replace(
        recipe,
        epochs=recipe.epochs if epochs is None else epochs,
        ensemble=recipe.ensemble if ensemble is None else ensemble,
    )
    command = shlex.join(
        [
            *("bayroute", "train", "--data", str(data), "--out", str(out)),
            *("--seed", str(seed), "--epochs", str(config.epochs), "--ensemble", str(config.ensemble)),
            *("--device", device),
        ]
    )
    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("epochs", total=config.total_epochs, status="")

        def on_epoch(stats: EpochStats) -> None:
            status = f"{stats.phase} {stats.epoch}/{stats.epochs}  loss {stats.train_loss:.3f}"
            status += f"  val acc {stats.val_accuracy:.3f}"
            progress.update(task, completed=stats.completed, status=status)

        try:
            result = train_and_export(data, out, config, command=command, device=device, on_epoch=on_epoch)
        except ValueError as exc:  # bad data folder or unavailable device: say which, no traceback
            console.print(f"[red]{exc}")
            raise typer.Exit(code=1) from exc

    run = result.run
    metrics = run.val_metrics
    operating_point = metrics["precision_0.99"]
    threshold = operating_point["threshold"]
    to_target = "never" if run.time_to_target_s is None else f"{run.time_to_target_s:.1f} s"
    console.print(f"device {run.device}; training {run.wall_time_s:.1f} s, total {result.total_time_s:.1f} s")
    console.print(f"time to 90% validation accuracy: {to_target}")
    console.print(
        f"validation (n={metrics['n']}): accuracy {metrics['accuracy']:.4f}  NLL {metrics['nll']:.4f}  "
        f"ECE {metrics['ece']:.4f}  temperature {run.temperature:.3f}"
    )
    for name, row in metrics["thresholds"].items():
        precision = "n/a" if row["precision"] is None else f"{row['precision']:.4f}"
        console.print(f"  threshold {name}: automation {row['automation_rate']:.3f}  precision {precision}")
    console.print(
        "  99% precision: "
        + ("not reached" if threshold is None else f"threshold {threshold:.4f}, ")
        + f"automation {operating_point['automation_rate']:.3f}"
    )
    console.print(f"wrote {result.model_path} ({result.model_path.stat().st_size / 1e6:.2f} MB) and {result.card_path}")
