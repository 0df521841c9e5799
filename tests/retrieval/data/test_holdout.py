"""The held-out validation split: stratified by coarse class, seeded, disjoint from training."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageChops

from coins.retrieval.data import build_dataset
from coins.retrieval.data.holdout import holdout, holdout_counts

TINY = {"num_train": 64, "num_test": 8, "num_coarse": 4, "num_fine": 8}


def expected_count(n: int, fraction: float) -> int:
    """The documented rule, written out case by case."""
    if n < 2 or fraction == 0:
        return 0
    k = int(fraction * n + 0.5)  # halves round up
    return min(max(k, 1), n - 1)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.5, 0.9])
def test_counts_follow_the_rule_per_coarse_class(fraction) -> None:
    sizes = {0: 1, 1: 2, 2: 3, 3: 5, 4: 10, 5: 7}
    labels = np.repeat(np.array(list(sizes)), list(sizes.values()))
    got = holdout_counts(labels, fraction)
    assert got == {c: expected_count(n, fraction) for c, n in sizes.items()}


def test_rounding_examples() -> None:
    labels = np.repeat(np.arange(4), [5, 2, 1, 10])
    assert holdout_counts(labels, 0.5) == {0: 3, 1: 1, 2: 0, 3: 5}  # 2.5 -> 3; 1 -> 1; 1 item
    assert holdout_counts(labels, 0.01) == {0: 1, 1: 1, 2: 0, 3: 1}  # at least one per class


def test_the_split_is_disjoint_complete_stratified_and_seeded() -> None:
    data = build_dataset("synthetic-patches", "train", **TINY)
    train, val = holdout(data, 0.25, seed=3)
    assert (train.split, val.split) == ("train", "val")
    assert len(train) + len(val) == len(data)
    assert not set(train.ids.tolist()) & set(val.ids.tolist())
    counts = holdout_counts(data.coarse_labels, 0.25)
    for c, k in counts.items():
        assert (val.coarse_labels == c).sum() == k
    again, _ = holdout(data, 0.25, seed=3)
    other, _ = holdout(data, 0.25, seed=4)
    assert np.array_equal(again.ids, train.ids)
    assert not np.array_equal(other.ids, train.ids)


def test_items_are_the_base_items() -> None:
    data = build_dataset("synthetic-patches", "train", **TINY)
    _, val = holdout(data, 0.25, seed=0)
    position = {int(i): p for p, i in enumerate(data.ids)}
    for j in range(len(val)):
        item, source = val[j], data[position[val[j].id]]
        assert (item.coarse, item.fine) == (source.coarse, source.fine)
        assert ImageChops.difference(item.image, source.image).getbbox() is None


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_fraction_outside_0_1_is_refused(fraction) -> None:
    data = build_dataset("synthetic-patches", "train", **TINY)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        holdout(data, fraction, seed=0)
