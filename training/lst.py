"""The ``.lst`` + images layout that the SageMaker built-in image-classification algorithm reads.

Each ``.lst`` line is ``index<TAB>label<TAB>relative/path``, the path relative to the image channel's root.
The algorithm takes four channels: ``train`` and ``validation`` (the images) and ``train_lst`` and
``validation_lst`` (one ``.lst`` file each). ``export_lst_channels`` writes one folder per channel:

    OUT/train/<class>/<file>.png        OUT/train_lst/train.lst
    OUT/validation/<class>/<file>.png   OUT/validation_lst/validation.lst
    OUT/classes.json                    (label index -> class name, for people and for bayroute)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.folder import write_folder_dataset

IMAGE_CHANNELS = ("train", "validation")
LST_CHANNELS = ("train_lst", "validation_lst")
CLASSES_FILE = "classes.json"


class LstFormatError(ValueError):
    """A ``.lst`` line is not ``index<TAB>label<TAB>path``."""


@dataclass(frozen=True)
class LstEntry:
    index: int
    label: int
    path: str  # POSIX path relative to the image channel root


def format_lst(entries: Sequence[LstEntry]) -> str:
    return "".join(f"{e.index}\t{e.label}\t{e.path}\n" for e in entries)


def parse_lst(text: str) -> list[LstEntry]:
    """Entries of a ``.lst`` file; labels may be written as floats (``1.000000``, as MXNet's im2rec does)."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3 or not fields[2]:
                raise ValueError("expected 3 tab-separated fields")
            label = float(fields[1])
            if not label.is_integer():
                raise ValueError(f"label {fields[1]!r} is not a whole number")
            entries.append(LstEntry(index=int(fields[0]), label=int(label), path=fields[2]))
        except ValueError as exc:
            raise LstFormatError(f"line {number}: {exc}: {line!r}") from exc
    return entries


def export_lst_channels(
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    names: Sequence[str],
    out: Path,
    *,
    train_indices: np.ndarray,
    val_indices: np.ndarray,
) -> dict[str, Path]:
    """Write the four channels for the given split; returns channel name -> folder."""
    out = Path(out)
    channels: dict[str, Path] = {}
    for channel, indices in zip(IMAGE_CHANNELS, (train_indices, val_indices), strict=True):
        root = out / channel
        written = write_folder_dataset(
            images[indices], labels[indices], classes, root, names=[names[i] for i in indices]
        )
        entries = [
            LstEntry(index=i, label=int(labels[source]), path=path.relative_to(root).as_posix())
            for i, (source, path) in enumerate(zip(indices, written, strict=True))
        ]
        lst_dir = out / f"{channel}_lst"
        lst_dir.mkdir(parents=True, exist_ok=True)
        (lst_dir / f"{channel}.lst").write_text(format_lst(entries), encoding="utf-8")
        channels[channel] = root
        channels[f"{channel}_lst"] = lst_dir
    (out / CLASSES_FILE).write_text(json.dumps(list(classes)) + "\n", encoding="utf-8")
    return channels
