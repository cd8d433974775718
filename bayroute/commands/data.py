"""``bayroute data fetch`` and ``bayroute data export``: get the CIFAR-100 vehicles and lay them out for training.

Mount with ``app.add_typer(data.app, name="data")``.

- ``fetch`` downloads the official archive (resumable, md5-checked) and writes its bicycle/motorcycle images as
  ``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png`` plus ``CIFAR_INDEX.tsv`` (each image's row in the
  original array), the layout of ``shared/datasets/cifar100-vehicles``.
- ``export`` splits training images (a folder, or the CIFAR train split) with the fixed stratified split that
  training uses and writes ``OUT/{train,validation}/<class>/`` (``--format folder``) or the four channels of the
  SageMaker built-in algorithm (``--format lst``). The CIFAR *test* images are never exported: they are the
  held-out set.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from training.cifar import (
    CIFAR100_MD5,
    CIFAR100_URL,
    CLASSES,
    VEHICLE_FINE_LABELS,
    ArchiveChecksumError,
    CifarFormatError,
    CifarVehicles,
    DownloadError,
    default_cache_dir,
    fetch_cifar100,
    load_vehicles,
)
from training.folder import FolderDatasetError, load_folder_dataset, write_folder_dataset
from training.lst import CLASSES_FILE, IMAGE_CHANNELS, LST_CHANNELS, export_lst_channels
from training.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, stratified_split

app = typer.Typer(help="Get the CIFAR-100 vehicle images and export them for training.", no_args_is_help=True)

CIFAR_SOURCE = "cifar"
FETCH_FOLDER = "cifar100-vehicles"
INDEX_FILE = "CIFAR_INDEX.tsv"


class ExportFormat(StrEnum):
    folder = "folder"
    lst = "lst"


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    names: list[str]  # file name of each image, unique within its class


CacheOption = Annotated[
    Path | None,
    typer.Option("--cache", help="Where the archive is kept (default: $BAYROUTE_CACHE_DIR or ~/.cache/bayroute)."),
]
UrlOption = Annotated[str, typer.Option(help="Archive URL (a mirror).")]
Md5Option = Annotated[str, typer.Option(help="The archive's expected md5.")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a download progress bar.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace what an earlier run wrote in OUT.")]


def _fail(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _clear(out: Path, entries: list[str], force: bool) -> None:
    """Refuse to mix with an earlier export unless ``force``; then remove only what this command writes."""
    existing = [out / name for name in entries if (out / name).exists()]
    if existing and not force:
        raise _fail(f"{', '.join(map(str, existing))} already exist(s); pass --force to replace")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _cifar_splits(cache: Path | None, url: str, md5: str, progress: bool) -> dict[str, CifarVehicles]:
    try:
        return load_vehicles(fetch_cifar100(cache, url=url, md5=md5, show_progress=progress))
    except (DownloadError, ArchiveChecksumError, CifarFormatError) as exc:
        raise _fail(str(exc)) from exc


@app.command("fetch")
def fetch_command(
    cache: CacheOption = None,
    out: Annotated[Path | None, typer.Option(help=f"Image folder (default: CACHE/{FETCH_FOLDER}).")] = None,
    url: UrlOption = CIFAR100_URL,
    md5: Md5Option = CIFAR100_MD5,
    progress: ProgressOption = True,
    force: ForceOption = False,
) -> None:
    """Download CIFAR-100 and write its bicycle and motorcycle images, train and test, one folder per class."""
    out = out or (cache or default_cache_dir()) / FETCH_FOLDER
    _clear(out, ["train", "test", INDEX_FILE], force)
    splits = _cifar_splits(cache, url, md5, progress)
    fine_label = {name: fine for fine, name in VEHICLE_FINE_LABELS.items()}
    index_rows = ["split\tclass\tfilename\tcifar100_index_in_split\tfine_label"]
    for split_name, split in splits.items():
        write_folder_dataset(split.images, split.labels, CLASSES, out / split_name, names=split.filenames)
        for name, label, row in zip(split.filenames, split.labels, split.source_indices, strict=True):
            class_name = CLASSES[int(label)]
            index_rows.append(f"{split_name}\t{class_name}\t{name}\t{row}\t{fine_label[class_name]}")
        counts = ", ".join(f"{n} {c}" for c, n in zip(CLASSES, np.bincount(split.labels, minlength=2), strict=True))
        typer.echo(f"{split_name}: {counts} -> {out / split_name}")
    (out / INDEX_FILE).write_text("\n".join(index_rows) + "\n", encoding="utf-8")


def _training_images(source: str, cache: Path | None, url: str, md5: str, progress: bool) -> LabelledImages:
    if source == CIFAR_SOURCE:
        train = _cifar_splits(cache, url, md5, progress)["train"]
        return LabelledImages(train.images, train.labels, list(CLASSES), train.filenames)
    try:
        dataset = load_folder_dataset(Path(source))
    except FolderDatasetError as exc:
        raise _fail(str(exc)) from exc
    # Exports are PNG: a JPEG source keeps its stem, so "a.jpg" and "a.png" in one class would collide.
    return LabelledImages(dataset.images, dataset.labels, dataset.classes, [p.name for p in dataset.paths])


def export_split(
    data: LabelledImages, out: Path, fmt: ExportFormat, *, val_fraction: float, seed: int
) -> dict[str, int]:
    """Write the stratified train/validation split of ``data`` in ``fmt``; returns the image count per split."""
    train_idx, val_idx = stratified_split(data.labels, val_fraction, seed)
    if fmt is ExportFormat.lst:
        export_lst_channels(
            data.images, data.labels, data.classes, data.names, out, train_indices=train_idx, val_indices=val_idx
        )
    else:
        for split_name, indices in zip(IMAGE_CHANNELS, (train_idx, val_idx), strict=True):
            names = [data.names[i] for i in indices]
            write_folder_dataset(
                data.images[indices], data.labels[indices], data.classes, out / split_name, names=names
            )
    return {"train": int(train_idx.size), "validation": int(val_idx.size)}


@app.command("export")
def export_command(
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="folder: OUT/{train,validation}/<class>/; lst: SageMaker built-in channels."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    source: Annotated[
        str, typer.Option(help=f"A folder-per-class image folder, or '{CIFAR_SOURCE}' (the CIFAR-100 train split).")
    ] = CIFAR_SOURCE,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of each class in validation.")
    ] = DEFAULT_VAL_FRACTION,
    seed: Annotated[int, typer.Option(help="Split seed (the default is training's).")] = DEFAULT_SPLIT_SEED,
    cache: CacheOption = None,
    url: UrlOption = CIFAR100_URL,
    md5: Md5Option = CIFAR100_MD5,
    progress: ProgressOption = True,
    force: ForceOption = False,
) -> None:
    """Split training images into train and validation (stratified, seeded) and write them as FORMAT."""
    entries = [*IMAGE_CHANNELS, *LST_CHANNELS, CLASSES_FILE]
    _clear(out, entries, force)
    data = _training_images(source, cache, url, md5, progress)
    try:
        counts = export_split(data, out, fmt, val_fraction=val_fraction, seed=seed)
    except (ValueError, FileExistsError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{fmt.value}: {counts['train']} train, {counts['validation']} validation images -> {out}")
