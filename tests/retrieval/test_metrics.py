"""Retrieval metrics against a slow, obvious reference loop, and hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coins.retrieval import knn as knn_module
from coins.retrieval.metrics import (
    MapAtR,
    ap_at_r,
    knn_accuracy,
    knn_vote,
    map_at_r,
    recall_at_k,
    recall_hits,
    retrieval_metrics,
)

KS = (1, 2, 4, 8, 500)  # 500 > N - 1: all others
SEEDS = range(6)

# ---- reference: one query at a time, exact scores, textbook definitions ------------------


def ref_order(x: np.ndarray, i: int) -> tuple[list[int], dict[int, float]]:
    """All items but i, by (-cosine, index); cosines are correctly rounded sums (fsum), so
    identical rows tie exactly."""
    unit = [row / math.sqrt(math.fsum(row * row)) for row in x.astype(np.float64)]
    score = {j: math.fsum(unit[i] * unit[j]) for j in range(len(x)) if j != i}
    return sorted(score, key=lambda j: (-score[j], j)), score


def ref_metrics(x: np.ndarray, labels: np.ndarray, ks: tuple[int, ...], knn_k: int) -> dict:
    hits = dict.fromkeys(ks, 0)
    aps, correct, queries = [], 0, 0
    for i in range(len(x)):
        if labels[i] < 0:
            continue  # unlabelled: gallery only
        queries += 1
        order, score = ref_order(x, i)
        rel = [labels[j] == labels[i] for j in order]
        for K in ks:
            hits[K] += any(rel[:K])
        R = sum(rel)
        if R > 0:
            aps.append(math.fsum(sum(rel[:r]) / r for r in range(1, R + 1) if rel[r - 1]) / R)
        votes: dict[int, list[float]] = {}
        for j in order[:knn_k]:
            if labels[j] >= 0:
                votes.setdefault(int(labels[j]), []).append(score[j])
        total = {lab: math.fsum(s) for lab, s in votes.items()}
        best = max(total.values(), default=None)
        pred = min((lab for lab, v in total.items() if v == best), default=-1)
        correct += pred == labels[i]
    out = {f"recall@{K}": hits[K] / queries for K in ks}
    out["map@r"] = math.fsum(aps) / len(aps)
    out["knn_acc"] = correct / queries
    out["excluded"] = queries - len(aps)
    return out


def make_data(seed: int, n: int = 60, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors with duplicates (some rescaled, some relabelled), singleton labels and
    unlabelled items; redrawn until distinct cosines differ by > 4e-6, so that float32
    rounding cannot reorder them (only true duplicates tie)."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.standard_normal((n, d))
        labels = rng.integers(0, 5, n)
        src, dst = rng.choice(n, 10, replace=False).reshape(2, 5)
        x[dst] = x[src] * rng.choice([1.0, 2.0], (5, 1))  # x2 is exact: same unit vector
        labels[dst[:2]] = labels[src[:2]] + 1  # duplicates with a different label
        x[dst[4] - 1] = x[src[4]]  # a triple of the same vector
        labels[rng.choice(n, 3, replace=False)] = [100, 101, -1]  # singletons, unlabelled
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        distinct = np.unique(unit, axis=0)  # [u, d]
        gaps = np.diff(np.sort(unit @ distinct.T, axis=1), axis=1)  # [n, u - 1]
        if gaps.min() > 4e-6:
            return x, labels


# ---- implementation == reference ----------------------------------------------------------


@pytest.mark.parametrize("d", [8, 64])
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_reference(seed: int, d: int) -> None:
    x, labels = make_data(seed, d=d)
    knn_k = 1 + seed % 4 * 3  # 1, 4, 7, 10
    ref = ref_metrics(x, labels, KS, knn_k)
    got = retrieval_metrics(x, labels, ks=KS, knn_k=knn_k)
    assert list(got) == [f"recall@{K}" for K in KS] + ["map@r", "knn_acc"]
    for key, value in got.items():
        assert value == pytest.approx(ref[key], abs=1e-9), key
    assert recall_at_k(x, labels, KS) == {K: got[f"recall@{K}"] for K in KS}
    m = map_at_r(x, labels)
    assert m.value == got["map@r"] and m.excluded == ref["excluded"]
    assert m.queries + m.excluded == (labels >= 0).sum()
    assert knn_accuracy(x, labels, knn_k) == got["knn_acc"]


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_small_blocks_same_as_one_block(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x, labels = make_data(seed, d=16)
    whole = retrieval_metrics(x, labels, ks=KS)
    monkeypatch.setattr(knn_module, "MAX_BLOCK", 7)
    assert retrieval_metrics(x, labels, ks=KS) == whole


# ---- hand-made cases ---------------------------------------------------------------------

# Four points on the unit circle, labels [0, 0, 1, 1]; cosines (rows: query):
#   p0 (1, 0):     p1 .6,  p2  0, p3 -1    -> order 1, 2, 3
#   p1 (.6, .8):   p0 .6,  p2 .8, p3 -.6   -> order 2, 0, 3
#   p2 (0, 1):     p0  0,  p1 .8, p3  0    -> order 1, 0, 3 (p0, p3 tie: by index)
#   p3 (-1, 0):    p0 -1,  p1 -.6, p2 0    -> order 2, 1, 0
# First same-label rank: 1, 2, 3, 1.
CIRCLE = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-5.0, 0.0]])  # p3 unnormalised
CIRCLE_LABELS = np.array([0, 0, 1, 1])


def test_circle_recall() -> None:
    got = recall_at_k(CIRCLE, CIRCLE_LABELS, ks=(1, 2, 3, 4))
    assert got == {1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0}


def test_circle_map_at_r() -> None:
    # R = 1 for all: AP@1 = rel(1) = 1, 0, 0, 1.
    assert map_at_r(CIRCLE, CIRCLE_LABELS) == MapAtR(value=0.5, queries=4, excluded=0)


def test_circle_knn() -> None:
    # k = 1: nearest labels 0, 1, 0, 1 -> right for p0, p3.
    assert knn_accuracy(CIRCLE, CIRCLE_LABELS, k=1) == 0.5
    # k = 3: votes (label 0 | label 1): p0 .6 | -1; p1 .6 | .2; p2 .8 | 0; p3 -1.6 | 0.
    assert knn_accuracy(CIRCLE, CIRCLE_LABELS, k=3) == 0.75


def test_circle_singleton_and_unlabelled() -> None:
    labels = np.array([0, 0, 7, -1])  # p2 alone in its label, p3 not a query
    # Queries p0, p1, p2 (p3 is gallery only): first same-label rank 1, 2, none.
    assert recall_at_k(CIRCLE, labels, ks=(1, 3)) == {1: 1 / 3, 3: 2 / 3}
    # p0: AP@1 = 1; p1: nearest is p2 -> 0; p2 excluded (R = 0); p3 not a query.
    assert map_at_r(CIRCLE, labels) == MapAtR(value=0.5, queries=2, excluded=1)


def test_duplicate_with_other_label_is_a_miss() -> None:
    # Items 0, 1 are the same vector a, items 2, 3 the same c (orthogonal to a); labels
    # differ within each pair. A query's only same-vector neighbour is its twin, of the
    # other label: recall@1 = 0 (dropping rank 0 instead of the query's index could keep
    # the query itself, a false hit). Orders: q0: 1, 2, 3; q1: 0, 2, 3; q2: 3, 0, 1;
    # q3: 2, 0, 1 (0 and 1 tie at 0: by index) -> first hit at rank 2, 3, 2, 3.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 1, 0, 1])
    assert recall_at_k(x, labels, ks=(1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}
    assert map_at_r(x, labels).value == 0.0
    assert knn_accuracy(x, labels, k=1) == 0.0


def test_duplicate_with_same_label_is_a_hit() -> None:
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # 0 and 1: same unit vector
    labels = np.array([3, 3, 4])
    assert recall_at_k(x, labels, ks=(1,)) == {1: 2 / 3}
    assert map_at_r(x, labels) == MapAtR(value=1.0, queries=2, excluded=1)


def test_all_singletons_map_is_nan() -> None:
    m = map_at_r(CIRCLE, np.array([0, 1, 2, 3]))
    assert math.isnan(m.value) and (m.queries, m.excluded) == (0, 4)


# ---- per-block functions -----------------------------------------------------------------


def test_recall_hits_counts_first_hit_rank() -> None:
    rel = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=bool)
    assert recall_hits(rel, [1, 2, 5]) == {1: 1, 2: 2, 5: 2}


def test_ap_at_r_only_first_r_count() -> None:
    rel = np.array([[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 0, 0]], dtype=bool)
    # R = 3: (1 + 2/3) / 3; R = 2: (1/2) / 2; R = 2: (1 + 1) / 2.
    got = ap_at_r(rel, np.array([3, 2, 2]))
    np.testing.assert_allclose(got, [5 / 9, 1 / 4, 1.0], rtol=0, atol=1e-12)


def test_knn_vote_ties_and_unlabelled() -> None:
    D = np.array([[0.5, 0.5, 0.1], [0.9, 0.2, 0.1], [0.9, 0.8, 0.7], [0.3, 0.2, 0.1]])
    L = np.array([[3, 2, 9], [-1, 4, 5], [-1, -1, -1], [6, 7, 7]])
    # tie 3 vs 2 -> 2; unlabelled .9 does not vote -> 4; no voter -> -1;
    # 6 (.3) vs 7 (.2 + .1, off by one rounding): a tie within VOTE_TOL -> 6
    np.testing.assert_array_equal(knn_vote(D, L), [2, 4, -1, 6])


# ---- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "labels", "match"),
    [
        (np.ones(4), np.zeros(4, int), "2-D"),
        (np.ones((1, 3)), np.zeros(1, int), "N >= 2"),
        (np.ones((4, 3)), np.zeros(3, int), "one per embedding"),
        (np.ones((4, 3)), np.zeros((4, 1), int), "1-D"),
        (np.ones((4, 3)), np.zeros(4), "integers"),
        (np.array([[1.0, np.nan], [1.0, 0.0]]), np.zeros(2, int), "finite"),
        (np.array([[0.0, 0.0], [1.0, 0.0]]), np.zeros(2, int), "non-zero"),
        (np.ones((4, 3)), -np.ones(4, int), "label >= 0"),
    ],
)
def test_validation(x: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(x, labels)


def test_validation_of_k() -> None:
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(CIRCLE, CIRCLE_LABELS, ks=())
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(CIRCLE, CIRCLE_LABELS, ks=(0, 1))
    with pytest.raises(ValueError, match="k-NN"):
        knn_accuracy(CIRCLE, CIRCLE_LABELS, k=0)
