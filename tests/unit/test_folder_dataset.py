from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.folder import FolderDatasetError, load_folder_dataset, write_folder_dataset

SHARED_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar100-vehicles" / "train"


def _save(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (4, 3), mode: str = "RGB") -> None:
    """An image of one colour; ``size`` is (width, height) as Pillow takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path)


def test_class_is_the_folder_and_classes_are_sorted(tmp_path: Path) -> None:
    _save(tmp_path / "zebra" / "bike_1.png", (255, 0, 0))
    _save(tmp_path / "apple" / "zebra_1.PNG", (0, 255, 0))
    _save(tmp_path / "apple" / "zebra_2.jpeg", (0, 0, 255))
    dataset = load_folder_dataset(tmp_path)
    assert dataset.classes == ["apple", "zebra"]
    assert [p.name for p in dataset.paths] == ["zebra_1.PNG", "zebra_2.jpeg", "bike_1.png"]
    assert dataset.labels.tolist() == [0, 0, 1]
    assert dataset.labels.dtype == np.int64
    assert dataset.images.shape == (3, 3, 4, 3) and dataset.images.dtype == np.uint8
    assert dataset.images[0, 0, 0].tolist() == [0, 255, 0]
    assert dataset.images[2, 1, 1].tolist() == [255, 0, 0]
    assert dataset.class_counts() == {"apple": 2, "zebra": 1}


def test_non_rgb_images_become_rgb_and_other_files_are_ignored(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "gray.png", (200, 200, 200), mode="L")
    _save(tmp_path / "a" / "alpha.png", (10, 20, 30), mode="RGBA")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    dataset = load_folder_dataset(tmp_path)
    assert dataset.classes == ["a"]
    assert dataset.images[:, 0, 0].tolist() == [[10, 20, 30], [200, 200, 200]]


def test_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(FolderDatasetError, match="not found"):
        load_folder_dataset(tmp_path / "nope")
    with pytest.raises(FolderDatasetError, match="no class folders"):
        load_folder_dataset(tmp_path)


def test_images_directly_in_root_get_a_hint(tmp_path: Path) -> None:
    _save(tmp_path / "loose.png", (1, 2, 3))
    with pytest.raises(FolderDatasetError, match="named after its class"):
        load_folder_dataset(tmp_path)


def test_class_folder_without_images(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "x.png", (1, 2, 3))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("")
    with pytest.raises(FolderDatasetError, match=r"class folder .*b holds no images"):
        load_folder_dataset(tmp_path)


def test_mixed_sizes_are_an_error_unless_size_is_given(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "small.png", (1, 2, 3), size=(4, 3))
    _save(tmp_path / "b" / "big.jpg", (250, 250, 250), size=(8, 6))
    with pytest.raises(FolderDatasetError, match=r"big.jpg is 8x6"):
        load_folder_dataset(tmp_path)
    dataset = load_folder_dataset(tmp_path, size=(5, 7))
    assert dataset.images.shape == (2, 5, 7, 3)
    assert dataset.images[1, 2, 3].tolist() == pytest.approx([250, 250, 250], abs=3)  # JPEG is lossy


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "ok.png", (1, 2, 3))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(FolderDatasetError, match=r"cannot read image .*broken.png"):
        load_folder_dataset(tmp_path)


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    labels = np.array([1, 0, 1, 1, 0])
    names = ["e.png", "d.png", "c.png", "b.png", "a.png"]
    written = write_folder_dataset(images, labels, ["bicycle", "motorcycle"], tmp_path, names=names)
    assert [p.relative_to(tmp_path).as_posix() for p in written][:2] == ["motorcycle/e.png", "bicycle/d.png"]
    loaded = load_folder_dataset(tmp_path)
    by_name = {
        p.name: (image, label) for p, image, label in zip(loaded.paths, loaded.images, loaded.labels, strict=True)
    }
    for name, image, label in zip(names, images, labels, strict=True):
        assert np.array_equal(by_name[name][0], image)  # PNG is lossless
        assert by_name[name][1] == label
    with pytest.raises(FileExistsError, match="duplicate file name"):
        write_folder_dataset(images[:1], labels[:1], ["bicycle", "motorcycle"], tmp_path, names=["e.png"])


@pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason=f"shared CIFAR-100 vehicles data absent at {SHARED_TRAIN}")
def test_real_shared_data_labels_come_from_folders() -> None:
    dataset = load_folder_dataset(SHARED_TRAIN)
    assert dataset.classes == ["bicycle", "motorcycle"]
    assert dataset.images.shape == (1000, 32, 32, 3)
    assert dataset.class_counts() == {"bicycle": 500, "motorcycle": 500}
    motorcycle = dataset.classes.index("motorcycle")
    bike_named_motorcycles = [
        p
        for p, label in zip(dataset.paths, dataset.labels, strict=True)
        if p.name.startswith("bike_s_") and label == motorcycle
    ]
    # Motorcycle photos whose CIFAR file name says "bike": a file-name rule would call them bicycles.
    assert len(bike_named_motorcycles) == 6  # train/ holds six (the README says seven)
    assert all(p.parent.name == "motorcycle" for p in bike_named_motorcycles)


def test_custom_decoder_is_used_and_its_errors_name_the_file(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "x.png", (1, 2, 3))
    _save(tmp_path / "b" / "y.png", (4, 5, 6))

    def constant(path: Path) -> np.ndarray:
        return np.full((2, 2, 3), 7 if path.parent.name == "a" else 9, dtype=np.uint8)

    dataset = load_folder_dataset(tmp_path, decode=constant)
    assert dataset.images.shape == (2, 2, 2, 3) and dataset.images[:, 0, 0, 0].tolist() == [7, 9]

    def failing(path: Path) -> np.ndarray:
        raise ValueError("too_many_pixels")

    with pytest.raises(FolderDatasetError, match=r"cannot read image .*x.png: too_many_pixels"):
        load_folder_dataset(tmp_path, decode=failing)
    with pytest.raises(FolderDatasetError, match=r"gave float64 \(2, 2\)"):
        load_folder_dataset(tmp_path, decode=lambda path: np.zeros((2, 2)))
