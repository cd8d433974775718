"""The fixed stratified validation split that training and evaluation share.

Each class is shuffled on its own with ``numpy.random.default_rng(seed)`` (classes taken in label order) and its
first ``round(count * val_fraction)`` members go to validation, so both classes keep their share in both parts
and the same (labels, fraction, seed) always gives the same indices, on any machine.
"""

from __future__ import annotations

import numpy as np

DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 20240601


def stratified_split(
    labels: np.ndarray, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, val_idx) into ``labels``; every class with 2+ members has 1+ in each part."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(members.size * val_fraction)
        if members.size >= 2:
            n_val = min(max(n_val, 1), members.size - 1)
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))
