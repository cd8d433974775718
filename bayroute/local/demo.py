"""The demo batch: real CIFAR-100 images of each class, one photo-sized JPEG, and a few bad files."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bayroute.config import REPO_ROOT

SHARED_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "cifar100-vehicles"
CLASSES = ("bicycle", "motorcycle")
PHOTO_SIZE = (3000, 2000)


@dataclass(frozen=True)
class DemoFile:
    name: str
    content: bytes
    expected: str  # a class name, or "dead-letter" for a file that must be rejected


class DemoDataMissing(RuntimeError):
    """Neither the shared dataset folder nor a fetched CIFAR-100 archive is available."""


def fetched_dataset() -> Path:
    """The folders `bayroute data fetch` writes from the CIFAR-100 archive it downloads once and caches."""
    from bayroute.commands.data import FETCH_FOLDER
    from training.cifar import default_cache_dir

    return default_cache_dir() / FETCH_FOLDER


def demo_dataset() -> Path:
    """The shared copy of the CIFAR-100 vehicle images where it exists (machines without internet), else the
    fetched archive's images, downloading the archive the first time."""
    if (SHARED_DATASET / "train").is_dir():
        return SHARED_DATASET
    fetched = fetched_dataset()
    if not (fetched / "train").is_dir():
        from bayroute.commands.data import fetch_command
        from training.cifar import CIFAR100_MD5, CIFAR100_URL, ArchiveChecksumError, DownloadError

        try:
            fetch_command(cache=None, out=None, url=CIFAR100_URL, md5=CIFAR100_MD5, progress=True, force=False)
        except (DownloadError, ArchiveChecksumError, OSError) as exc:
            raise DemoDataMissing(
                f"no CIFAR-100 images: {SHARED_DATASET} is absent and the download failed ({exc})"
            ) from exc
    return fetched


def real_images(per_class: int, seed: int, dataset: Path) -> list[tuple[str, Path]]:
    """(class, path) pairs drawn reproducibly from the folder-per-class training images."""
    root = dataset / "train"
    if not root.is_dir():
        raise DemoDataMissing(f"{root} not found: run `bayroute data fetch` or place the dataset there")
    rng = random.Random(seed)
    picked: list[tuple[str, Path]] = []
    for label in CLASSES:
        paths = sorted((root / label).glob("*.png"))
        picked.extend((label, path) for path in rng.sample(paths, min(per_class, len(paths))))
    return picked


def photo_from(path: Path) -> bytes:
    """A photo-sized JPEG (3000x2000) made from a 32x32 image, as a phone camera would send it."""
    with Image.open(path) as small:
        photo = small.convert("RGB").resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def truncated_jpeg(path: Path) -> bytes:
    whole = photo_from(path)
    return whole[: len(whole) // 3]


def demo_batch(per_class: int = 10, seed: int = 7, dataset: Path | None = None) -> list[DemoFile]:
    images = real_images(per_class, seed, dataset or demo_dataset())
    files = [DemoFile(f"{label}-{path.name}", path.read_bytes(), label) for label, path in images]
    photo_label, photo_source = images[0]
    files.append(DemoFile(f"photo-{photo_label}.jpg", photo_from(photo_source), photo_label))
    files.extend(
        [
            DemoFile("empty.png", b"", "dead-letter"),
            DemoFile("notes.png", b"driver notes: arrived 9:14, bay unknown\n", "dead-letter"),
            DemoFile("truncated.jpg", truncated_jpeg(images[-1][1]), "dead-letter"),
        ]
    )
    return files
