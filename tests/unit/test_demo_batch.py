"""The demo's batch and where its real images come from."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bayroute.local import demo
from training.cifar import DownloadError


def _write_dataset(root: Path, per_class: int = 3) -> Path:
    for label, colour in (("bicycle", 30), ("motorcycle", 200)):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((32, 32, 3), colour + i, dtype=np.uint8)).save(folder / f"{label}_{i}.png")
    return root


def test_the_batch_mixes_real_images_a_photo_and_bad_files(tmp_path: Path) -> None:
    batch = demo.demo_batch(per_class=2, dataset=_write_dataset(tmp_path))
    expected = [item.expected for item in batch]
    assert expected.count("bicycle") + expected.count("motorcycle") == 5  # 2 + 2 + the photo
    assert expected.count("dead-letter") == 3
    photo = next(item for item in batch if item.name.startswith("photo-"))
    with Image.open(io.BytesIO(photo.content)) as image:
        assert image.size == demo.PHOTO_SIZE and image.format == "JPEG"
    assert next(item for item in batch if item.name == "empty.png").content == b""


def test_without_the_shared_folder_the_fetched_archive_images_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "SHARED_DATASET", tmp_path / "absent")
    monkeypatch.setenv("BAYROUTE_CACHE_DIR", str(tmp_path / "cache"))
    _write_dataset(demo.fetched_dataset())
    assert demo.demo_dataset() == demo.fetched_dataset()


def test_a_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "SHARED_DATASET", tmp_path / "absent")
    monkeypatch.setenv("BAYROUTE_CACHE_DIR", str(tmp_path / "cache"))

    def offline(**_: object) -> None:
        raise DownloadError("no route to host")

    monkeypatch.setattr("bayroute.commands.data.fetch_command", offline)
    with pytest.raises(demo.DemoDataMissing, match="no route to host"):
        demo.demo_dataset()
