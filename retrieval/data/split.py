"""A train/test split of a gallery that has none of its own (`--test-fraction F --split-by ...`).

A folder without `train/` and `test/` folders, or a manifest without a `split` column, is the
one split `all`; `coins train --test-fraction F` cuts it in two, the same way for every seed:

- `item` (the default): a fraction F of the images of each fine class goes to `test` (of each
  coarse class, for images without a fine label). Test and training images show the same
  products, as a shop searching its own catalogue for new photos of items it sells.
- `fine`: a fraction F of the fine classes of each coarse class goes to `test` whole, as in
  the benchmarks (SOP, CUB, Cars): the test products were never trained on. Needs fine labels.

Per group of n members (images of a class for `item`, fine classes of a coarse class for
`fine`) k = round(F * n), halves up, at least 1 and at most n - 1, so that both sides keep
one; which ones is a permutation seeded by (seed, group). A coarse class that this leaves
without test images (a single image, or a single fine class with `fine`) is refused, naming
the class and the fix: an evaluation that never asks about a class says nothing about it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .base import DatasetError, RetrievalDataset
from .holdout import HeldOut
from .registry import build_dataset, dataset_splits

SPLIT_BY = ("item", "fine")
ALL = "all"  # the one split of a gallery without splits of its own


def check_test_fraction(fraction: float, split_by: str) -> None:
    """A ValueError unless 0 <= fraction < 1 and split_by is one of SPLIT_BY (0: no split)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"test_fraction must be in (0, 1) (0: the data set's own splits), got {fraction}"
        )
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by {split_by!r}: expected one of {', '.join(SPLIT_BY)}")


def _share(n: int, fraction: float) -> int:
    """Members of a group of `n` that go to test: round(F n) halves up, clipped to [1, n - 1]."""
    k = math.floor(fraction * n + 0.5)
    return min(max(k, 1), n - 1) if n >= 2 else 0


def held_for_test(
    coarse: np.ndarray, fine: np.ndarray | None, fraction: float, split_by: str, seed: int
) -> np.ndarray:
    """Positions (ascending) of the test items, by the rule in the module docstring."""
    check_test_fraction(fraction, split_by)
    if fraction == 0:
        raise ValueError("test_fraction 0 splits nothing: expected a fraction in (0, 1)")
    fine = np.full(len(coarse), -1, np.int64) if fine is None else fine
    if split_by == "fine" and (fine < 0).all():
        raise DatasetError(
            "split_by fine moves whole fine classes to test, and this gallery has no fine "
            "labels; use split_by item"
        )
    held: list[np.ndarray] = []
    for c in np.unique(coarse).tolist():
        in_c = coarse == c
        if split_by == "fine":
            names = np.unique(fine[in_c & (fine >= 0)])  # the fine classes of coarse class c
            order = np.random.default_rng([seed, c]).permutation(len(names))
            chosen = names[order[: _share(len(names), fraction)]]
            held.append(np.flatnonzero(in_c & np.isin(fine, chosen)))
            continue
        for f in np.unique(fine[in_c]).tolist():  # -1: the images of c without a fine label
            members = np.flatnonzero(in_c & (fine == f))
            order = np.random.default_rng([seed, c, f + 1]).permutation(len(members))
            held.append(members[order[: _share(len(members), fraction)]])
    test = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return test


def split_dataset(
    data: RetrievalDataset, fraction: float, split_by: str = "item", seed: int = 0
) -> dict[str, RetrievalDataset]:
    """{"train": ..., "test": ...} of `data`; a DatasetError if a coarse class gets no test
    image (or, with `fine`, no training image)."""
    test = held_for_test(data.coarse_labels, data.fine_labels, fraction, split_by, seed)
    train = np.setdiff1d(np.arange(len(data)), test)  # ascending
    for side, positions, other in (("test", test, "train"), ("train", train, "test")):
        empty = sorted(
            set(np.unique(data.coarse_labels).tolist())
            - set(np.unique(data.coarse_labels[positions]).tolist())
        )
        if empty:
            names = [data.coarse_classes[c] for c in empty]
            fix = (
                "give each coarse class two fine classes or more, or use split_by item"
                if split_by == "fine"
                else "give each coarse class two images or more"
            )
            raise DatasetError(
                f"test_fraction {fraction} by {split_by} leaves coarse class(es) {names} with "
                f"no {side} images (all in {other}); {fix}"
            )
    return {"train": HeldOut(data, train, "train"), "test": HeldOut(data, test, "test")}


def build_split(
    name: str,
    split: str,
    root: str | Path | None,
    options: dict[str, Any],
    test_fraction: float = 0.0,
    split_by: str = "item",
    seed: int = 0,
) -> RetrievalDataset:
    """Split `split` of data set `name`: the data set's own, or with `test_fraction` > 0 the
    `train` or `test` part of its one split `all`, cut by `split_dataset`."""
    check_test_fraction(test_fraction, split_by)
    if test_fraction == 0:
        return build_dataset(name, split, root, **options)
    own = dataset_splits(name, root)
    if own != (ALL,):
        raise ValueError(
            f"--test-fraction splits a gallery without splits of its own; {name} "
            f"{'at ' + str(root) + ' ' if root else ''}has the splits {list(own)}: drop "
            "--test-fraction, or point --root at a folder (or manifest) without them"
        )
    if split not in ("train", "test"):
        raise ValueError(f"--test-fraction makes the splits train and test, not {split!r}")
    whole = build_dataset(name, ALL, root, **options)
    return split_dataset(whole, test_fraction, split_by, seed)[split]
