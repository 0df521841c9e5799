"""A validation split held out of the training split, stratified by coarse class and seeded.

Every choice a user makes (method, loss weights, warm-up, epochs) is made on this split, so the
test split is evaluated once per reported result and never steers a choice (docs/method.md,
"Selecting without labels").

Rule, per coarse class c with n_c training items: n_val = round(F * n_c) (halves round up),
raised to 1 when F > 0 and n_c >= 2, and capped at n_c - 1 so that every class keeps a
training item; a class with one item stays in training. Which items are held out is a
permutation seeded by (seed, c), so the split of one class does not depend on the others.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .base import RetrievalDataset


class HeldOut(RetrievalDataset):
    """The items `indices` of `base` (ascending, in base order) as a data set named `split`."""

    def __init__(self, base: RetrievalDataset, indices: np.ndarray, split: str) -> None:
        assert indices.ndim == 1 and (np.diff(indices) > 0).all(), "indices must ascend"
        self.base, self.indices, self.split = base, indices.astype(np.int64), split
        self.coarse_classes = base.coarse_classes
        self.fine_classes = base.fine_classes
        self.coarse_labels = base.coarse_labels[self.indices]
        self.fine_labels = None if base.fine_labels is None else base.fine_labels[self.indices]
        self.ids = base.ids[self.indices]

    def image(self, index: int) -> Image.Image:
        return self.base.image(int(self.indices[index]))


def holdout_counts(coarse_labels: np.ndarray, fraction: float) -> dict[int, int]:
    """{coarse class: items held out} by the rule in the module docstring."""
    classes, sizes = np.unique(coarse_labels, return_counts=True)
    counts = {}
    for c, n in zip(classes.tolist(), sizes.tolist(), strict=True):
        k = math.floor(fraction * n + 0.5)  # round half up: 2.5 -> 3, not Python's 2
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        counts[c] = k if n >= 2 else 0
    return counts


def holdout(
    dataset: RetrievalDataset, fraction: float, seed: int
) -> tuple[RetrievalDataset, RetrievalDataset]:
    """(train, val): `dataset` without and with a held-out `fraction` of each coarse class."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    held: list[np.ndarray] = []
    for c, k in holdout_counts(dataset.coarse_labels, fraction).items():
        members = np.flatnonzero(dataset.coarse_labels == c)  # [n_c] ascending
        order = np.random.default_rng([seed, c]).permutation(len(members))
        held.append(members[order[:k]])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(dataset)), val)  # ascending
    return HeldOut(dataset, train, dataset.split), HeldOut(dataset, val, "val")
