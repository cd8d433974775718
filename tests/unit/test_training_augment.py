"""Batched augmentations: shapes, what they change, and reproducibility from the generator seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch
else:
    torch = pytest.importorskip("torch")

from training import augment


def _images(n: int = 6) -> torch.Tensor:
    return torch.arange(n * 3 * 32 * 32, dtype=torch.float32).reshape(n, 3, 32, 32) / 1000.0


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_keeps_shape_and_shifts_content_by_at_most_the_padding() -> None:
    images = _images()
    cropped = augment.random_crop(images, 4, _generator())
    assert cropped.shape == images.shape
    # Each output row of the centre region is a row of the input, shifted by <= 4 pixels.
    for original, shifted in zip(images, cropped, strict=True):
        centre = shifted[:, 4:28, 4:28]
        matches = [
            torch.equal(centre, original[:, 4 + dy : 28 + dy, 4 + dx : 28 + dx])
            for dy in range(-4, 5)
            for dx in range(-4, 5)
        ]
        assert any(matches)


def test_random_crop_without_padding_is_the_identity() -> None:
    images = _images()
    assert torch.equal(augment.random_crop(images, 0, _generator()), images)


def test_random_flip_mirrors_some_images_and_leaves_the_others() -> None:
    images = _images(64)
    flipped = augment.random_flip(images, _generator())
    mirrored = [torch.equal(f, i.flip(2)) for f, i in zip(flipped, images, strict=True)]
    untouched = [torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or u for m, u in zip(mirrored, untouched, strict=True))
    assert 10 < sum(mirrored) < 54


def test_cutout_zeroes_at_most_one_square_per_image() -> None:
    images = torch.ones(16, 3, 32, 32)
    holed = augment.cutout(images, 8, _generator())
    zeroed = (holed == 0).all(dim=1).sum(dim=(1, 2))
    assert holed.shape == images.shape
    assert (zeroed <= 64).all() and (zeroed > 0).all()


def test_mixup_blends_images_and_targets_with_the_same_weight() -> None:
    images = _images(8)
    targets = torch.nn.functional.one_hot(torch.tensor([0, 1] * 4), 2).float()
    mixed, mixed_targets = augment.mixup(images, targets, 0.4, _generator())
    assert mixed.shape == images.shape
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed, images)


def test_cutmix_targets_follow_the_pasted_area() -> None:
    images = torch.zeros(8, 3, 32, 32)
    images[4:] = 1.0  # the second half are "ones" images of class 1
    targets = torch.nn.functional.one_hot(torch.tensor([0] * 4 + [1] * 4), 2).float()
    mixed, mixed_targets = augment.cutmix(images, targets, 1.0, _generator(3))
    share_of_ones = mixed.mean(dim=(1, 2, 3))
    # Pixels that came from a class-1 image carry exactly that much class-1 target.
    assert torch.allclose(share_of_ones, mixed_targets[:, 1], atol=1e-6)


def test_same_seed_gives_the_same_augmentation() -> None:
    images = _images()
    first = augment.cutout(augment.random_crop(images, 4, _generator(5)), 8, _generator(6))
    second = augment.cutout(augment.random_crop(images, 4, _generator(5)), 8, _generator(6))
    assert torch.equal(first, second)
