"""Folder-per-class image datasets: ``ROOT/<class>/*.png|jpg|jpeg``.

The class of an image is the name of the folder it sits in, never anything in its file name (CIFAR file
names such as ``bike_s_000001.png`` are also used for motorcycles). Classes are the sorted folder names, so
label indices are stable across machines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


class FolderDatasetError(ValueError):
    """The folder does not hold a usable folder-per-class dataset."""


@dataclass(frozen=True)
class FolderDataset:
    images: np.ndarray  # uint8 [N, H, W, 3], RGB
    labels: np.ndarray  # int64 [N], index into classes
    classes: list[str]  # sorted class folder names
    paths: list[Path]  # the file of each image, same order as images

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts, strict=True)}


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (suffix checked case-insensitively), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_folder_dataset(
    root: Path, *, size: tuple[int, int] | None = None, decode: Callable[[Path], np.ndarray] | None = None
) -> FolderDataset:
    """Read every image under ``root/<class>/``.

    All images must share one size unless ``size`` (height, width) is given, in which case each image is
    resized to it (bilinear). ``decode`` replaces the reading of one file (the evaluator passes the serving
    path's decoder so that evaluation sees what the service sees); it raises OSError or ValueError for a bad
    file, reported with the file's path.
    Hidden folders (``.cache``...) are skipped; other files in a class folder are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise FolderDatasetError(f"dataset folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        stray = image_files(root)
        hint = (
            f" (found {len(stray)} images directly in it: put each in a folder named after its class)" if stray else ""
        )
        raise FolderDatasetError(f"no class folders in {root}{hint}")

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    for label, class_dir in enumerate(class_dirs):
        files = image_files(class_dir)
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise FolderDatasetError(f"class folder {class_dir} holds no images ({suffixes})")
        for path in files:
            arrays.append(_read_rgb(path, size) if decode is None else _decoded(decode, path))
            labels.append(label)
            paths.append(path)

    _check_same_shape(arrays, paths)
    return FolderDataset(
        images=np.stack(arrays).astype(np.uint8, copy=False),
        labels=np.asarray(labels, dtype=np.int64),
        classes=[d.name for d in class_dirs],
        paths=paths,
    )


def write_folder_dataset(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[str], out: Path, *, names: Sequence[str] | None = None
) -> list[Path]:
    """Write images as PNG files under ``out/<class>/``; returns the written paths in input order.

    ``names`` gives each file's name (CIFAR keeps its original file names); by default ``<index>.png``.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(labels) != len(images) or (names is not None and len(names) != len(images)):
        raise ValueError("images, labels and names must have the same length")
    written: list[Path] = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = names[index] if names is not None else f"{index:06d}.png"
        if Path(name).suffix.lower() != ".png":
            name = f"{Path(name).stem}.png"
        path = Path(out) / classes[int(label)] / name
        if path.exists():
            raise FileExistsError(f"{path} already written (duplicate file name within class {classes[int(label)]!r})")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        written.append(path)
    return written


def _read_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:  # Pillow raises these for bad files
        raise FolderDatasetError(f"cannot read image {path}: {exc}") from exc
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _decoded(decode: Callable[[Path], np.ndarray], path: Path) -> np.ndarray:
    try:
        array = decode(path)
    except (OSError, ValueError) as exc:  # the decoder's contract: a bad file raises one of these
        raise FolderDatasetError(f"cannot read image {path}: {exc}") from exc
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise FolderDatasetError(f"decoding {path} gave {array.dtype} {array.shape}, not uint8 [H, W, 3]")
    return array


def _check_same_shape(arrays: list[np.ndarray], paths: list[Path]) -> None:
    first = arrays[0].shape
    for array, path in zip(arrays, paths, strict=True):
        if array.shape != first:
            raise FolderDatasetError(
                f"images differ in size: {paths[0]} is {first[1]}x{first[0]}, {path} is "
                f"{array.shape[1]}x{array.shape[0]} (pass size=(height, width) to resize)"
            )
