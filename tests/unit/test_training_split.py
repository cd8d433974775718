"""The validation split is stratified, deterministic and a partition of the data."""

from __future__ import annotations

import numpy as np
import pytest

from training.split import stratified_split

LABELS = np.array([0] * 500 + [1] * 500)


def test_split_keeps_each_class_share_and_partitions_the_data() -> None:
    train_idx, val_idx = stratified_split(LABELS, 0.2, seed=7)
    assert np.bincount(LABELS[val_idx]).tolist() == [100, 100]
    assert np.bincount(LABELS[train_idx]).tolist() == [400, 400]
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(LABELS.size))


def test_split_is_deterministic_per_seed_and_changes_with_it() -> None:
    first = stratified_split(LABELS, 0.2, seed=7)
    again = stratified_split(LABELS, 0.2, seed=7)
    other = stratified_split(LABELS, 0.2, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_split_depends_on_labels_not_on_their_order_in_memory() -> None:
    # Interleaved labels: the split must still take 20% of each class.
    labels = np.array([0, 1] * 50)
    _, val_idx = stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[val_idx]).tolist() == [10, 10]


def test_tiny_class_keeps_one_member_on_each_side() -> None:
    labels = np.array([0] * 20 + [1] * 2)
    train_idx, val_idx = stratified_split(labels, 0.1, seed=0)
    assert (labels[val_idx] == 1).sum() == 1
    assert (labels[train_idx] == 1).sum() == 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(LABELS, fraction, seed=0)


def test_empty_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        stratified_split(np.array([], dtype=np.int64), 0.2, seed=0)
