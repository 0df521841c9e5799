"""exact_knn: leave-one-out neighbours by inner product, in blocks, ties by index."""

# FAISS names its results D (scores) and I (ids); E741 would rename I.
# ruff: noqa: E741

from __future__ import annotations

import math

import numpy as np
import pytest

from coins.retrieval.knn import exact_knn, nearest


def unit_rows(seed: int, n: int, d: int) -> np.ndarray:
    """Random unit vectors [n, d], redrawn until each query's scores differ by > 4e-6
    (float32 rounding cannot swap them)."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.standard_normal((n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        if np.diff(np.sort(x @ x.T, axis=1), axis=1).min() > 4e-6:
            return x


def ref_knn(x: np.ndarray, k: int) -> np.ndarray:
    """The k nearest others of every item by (-score, index), scores by fsum: [N, k]."""
    out = []
    for i in range(len(x)):
        score = {j: math.fsum(x[i] * x[j]) for j in range(len(x)) if j != i}
        out.append(sorted(score, key=lambda j: (-score[j], j))[:k])
    return np.array(out)


def collect(
    x: np.ndarray, k: int, block_size: int | None = None
) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    starts: list[int] = []
    Ds: list[np.ndarray] = []
    Is: list[np.ndarray] = []
    for start, D, I in exact_knn(x, k, block_size):
        starts.append(start)
        Ds.append(D)
        Is.append(I)
    return starts, Ds, Is


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 5, 39, 100])
def test_matches_reference(seed: int, k: int) -> None:
    x = unit_rows(seed, n=40, d=8)
    _, Ds, Is = collect(x, k)
    I = np.concatenate(Is)
    np.testing.assert_array_equal(I, ref_knn(x, min(k, 39)))
    D = np.concatenate(Ds)
    np.testing.assert_allclose(D, np.take_along_axis(x @ x.T, I, axis=1), atol=1e-6)


def test_blocks_cover_each_query_once() -> None:
    x = unit_rows(0, n=50, d=16)
    starts, Ds, Is = collect(x, 4, block_size=7)
    assert starts == list(range(0, 50, 7))
    assert [len(I) for I in Is] == [7] * 7 + [1]
    assert all(D.shape == I.shape == (len(I), 4) for D, I in zip(Ds, Is, strict=True))
    _, Ds1, Is1 = collect(x, 4)
    assert len(Is1) == 1
    np.testing.assert_array_equal(np.concatenate(Is), Is1[0])
    np.testing.assert_array_equal(np.concatenate(Ds), Ds1[0])


def test_never_returns_self() -> None:
    x = unit_rows(1, n=30, d=4)
    x[10:20] = x[10]  # duplicates: self ties with its copies
    for start, _, I in exact_knn(x, 29, block_size=8):
        q = np.arange(start, start + len(I))[:, None]
        assert not (q == I).any()
        assert all(len(set(row)) == 29 for row in I.tolist())  # all others, once


@pytest.mark.parametrize("block_size", [None, 9])
def test_duplicates_ordered_by_index(block_size: int | None) -> None:
    # 30 copies of one vector scattered among others: each copy's nearest others are the
    # other copies in index order, even past the first search window (k + 1 + margin).
    rng = np.random.default_rng(2)
    x = unit_rows(3, n=70, d=8)
    copies = np.sort(rng.choice(70, 30, replace=False))
    x[copies] = x[copies[0]]
    for k in (5, 40):
        I = np.concatenate(collect(x, k, block_size)[2])  # [70, k]
        for q in copies:
            others = copies[copies != q]
            np.testing.assert_array_equal(I[q, :29], others[:k])
        assert np.array_equal(I, ref_knn(x, k))


def test_near_ties_chain_and_order_by_index() -> None:
    # Scores from query 0: .5, .5 + 6e-7, .5 + 1.2e-6, .4. Steps of 6e-7 < 1e-6 chain the
    # first three into one tie group (its ends differ by more than 1e-6), ordered by index.
    cos = np.array([1.0, 0.5, 0.5 + 6e-7, 0.5 + 1.2e-6, 0.4])
    x = np.stack([cos, np.sqrt(1 - cos**2)], axis=1)  # [5, 2] on the unit circle
    (I,) = collect(x, 4)[2]
    np.testing.assert_array_equal(I[0], [1, 2, 3, 4])


def test_accepts_float64_and_non_contiguous() -> None:
    x = unit_rows(4, n=20, d=6)
    _, _, Is = collect(np.asfortranarray(x), 3)
    _, _, Is32 = collect(x.astype(np.float32), 3)
    np.testing.assert_array_equal(Is[0], Is32[0])


@pytest.mark.parametrize(
    ("x", "k", "block_size", "match"),
    [
        (np.ones(5), 1, None, "2-D"),
        (np.ones((2, 2, 2)), 1, None, "2-D"),
        (np.ones((1, 4)), 1, None, "N >= 2"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 1, None, "finite"),
        (np.array([[np.inf, 0.0], [0.0, 1.0]]), 1, None, "finite"),
        (np.eye(3), 0, None, "k must be"),
        (np.eye(3), 1, 0, "block_size"),
    ],
)
def test_validation(x: np.ndarray, k: int, block_size: int | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        exact_knn(x, k, block_size)  # raises at the call, before any block


@pytest.mark.parametrize("with_allowed", [False, True])
def test_nearest_matches_a_slow_loop_with_exclusion_and_subset(with_allowed: bool) -> None:
    rng = np.random.default_rng(3)
    xb = rng.normal(size=(40, 5)).astype(np.float32)
    xb[7] = xb[3]  # an exact tie, ordered by index
    xq = xb[[3, 10, 21]]
    allowed = np.flatnonzero(np.arange(40) % 4 != 1) if with_allowed else np.arange(40)
    exclude = np.array([3, 10, 5])  # 5 is not allowed when the subset is used
    D, I = nearest(xq, xb, 6, exclude=exclude, allowed=allowed if with_allowed else None)
    for q in range(3):
        others = [j for j in allowed if j != exclude[q]]
        ref = sorted(others, key=lambda j: (-float(xq[q] @ xb[j]), j))[:6]
        assert I[q].tolist() == ref
        np.testing.assert_allclose(D[q], [xq[q] @ xb[j] for j in ref], rtol=1e-5)
