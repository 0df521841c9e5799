"""Retrieval metrics of an embedding: Recall@K, MAP@R and k-NN accuracy, leave-one-out.

Each item of the set is a query against all the others, by cosine similarity. All metrics
are computed from one block-wise neighbour search (`exact_knn`); the per-block functions
below (`recall_hits`, `ap_at_r`, `knn_vote`) are pure and shared by every entry point.

Labels are integers [N]; a label < 0 means "no label": the item stays in the gallery (it
can be retrieved, and is never relevant) but is not a query.
"""

# FAISS names its results D (scores) and I (ids); E741 would rename I.
# ruff: noqa: E741

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .knn import exact_knn

VOTE_TOL = 1e-5  # k-NN votes closer than this tie (float32 scores), won by the smaller label


class MapAtR(NamedTuple):
    """MAP@R over the queries with R >= 1; `excluded` counts the queries with R = 0."""

    value: float
    queries: int
    excluded: int


def recall_at_k(
    embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8)
) -> dict[int, float]:
    """Fraction of queries with a same-label item among their K nearest others, per K.

    Every query counts: one whose label occurs once is a miss. K > N - 1 means all others.
    """
    ks = _check_ks(ks)
    t = _tally(embeddings, labels, ks=ks)
    return {K: t.hits[K] / t.queries for K in ks}


def map_at_r(embeddings: np.ndarray, labels: np.ndarray) -> MapAtR:
    """MAP@R (Musgrave et al. 2020, "A metric learning reality check").

    A query with R same-label others retrieves its R nearest others and scores
    AP@R = (1/R) * sum_{i<=R} P(i) * rel(i); queries with R = 0 are excluded. The value is
    NaN when every query is excluded.
    """
    t = _tally(embeddings, labels, map_r=True)
    value, queries = _mean(t.aps)
    return MapAtR(value=value, queries=queries, excluded=t.queries - queries)


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Fraction of queries whose label wins the cosine-weighted vote of their k nearest others.

    Unlabelled neighbours do not vote; a query without voters is wrong. Votes within 1e-5
    of the best tie, and the smaller label wins.
    """
    t = _tally(embeddings, labels, knn_k=_check_knn_k(k))
    return t.correct / t.queries


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    knn_k: int = 10,
) -> dict[str, float]:
    """Recall@K for each K, MAP@R and k-NN accuracy from one shared neighbour search."""
    ks = _check_ks(ks)
    t = _tally(embeddings, labels, ks=ks, knn_k=_check_knn_k(knn_k), map_r=True)
    out = {f"recall@{K}": t.hits[K] / t.queries for K in ks}
    out["map@r"] = _mean(t.aps)[0]
    out["knn_acc"] = t.correct / t.queries
    return out


# ---- per-block metrics: pure functions of one block's neighbours ------------------------


def recall_hits(rel: np.ndarray, ks: Sequence[int]) -> dict[int, int]:
    """Number of queries with a relevant item within their first K neighbours, per K.

    rel: [b, k'] bool, neighbour j of query i has the query's label.
    """
    never = np.iinfo(np.int64).max  # rank of the first hit of a query without any
    first = np.where(rel.any(axis=1), rel.argmax(axis=1), never)  # [b] 0-based
    return {K: int((first < K).sum()) for K in ks}


def ap_at_r(rel: np.ndarray, R: np.ndarray) -> np.ndarray:
    """AP@R per query: (1/R) * sum_{i<=R} P(i) * rel(i), with P(i) the precision at i.

    rel: [b, k'] bool with k' >= max(R); R: [b] >= 1.
    """
    rel = rel & (np.arange(rel.shape[1]) < R[:, None])  # [b, k'] only the first R count
    hits = np.cumsum(rel, axis=1, dtype=np.int32)  # [b, k'] relevant items up to rank i
    rows, cols = np.nonzero(rel)  # the ranks i (0-based) with rel(i) = 1
    precision = hits[rows, cols] / (cols + 1)  # P(i) at those ranks
    return np.bincount(rows, weights=precision, minlength=len(R)) / R  # [b]


def knn_vote(D: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Label predicted by the similarity-weighted vote of each row's neighbours.

    D: [b, k] similarities, L: [b, k] neighbour labels (< 0: no vote). Votes within
    VOTE_TOL of the row's best tie; the smaller label wins. Rows without voters get -1.
    """
    b, k = L.shape
    pred = np.full(b, -1, dtype=np.int64)
    valid = L.ravel() >= 0  # [b*k]
    if not valid.any():
        return pred
    row = np.repeat(np.arange(b), k)  # [b*k]
    row, lab, w = row[valid], L.ravel()[valid], D.ravel()[valid].astype(np.float64)
    keys, inv = np.unique(np.stack([row, lab]), axis=1, return_inverse=True)  # sorted by row
    votes = np.bincount(inv.ravel(), weights=w)  # [u] one vote total per (row, label)
    best = np.full(b, -np.inf)
    np.maximum.at(best, keys[0], votes)
    cand = np.flatnonzero(votes >= best[keys[0]] - VOTE_TOL)  # labels ascending within rows
    rows, first = np.unique(keys[0, cand], return_index=True)
    pred[rows] = keys[1, cand[first]]
    return pred


# ---- one search, every metric ---------------------------------------------------------


@dataclass
class _Tally:
    """Sums over query blocks, turned into metrics by the public functions."""

    queries: int = 0  # labelled queries
    hits: dict[int, int] = field(default_factory=dict)  # K -> queries with a hit in top K
    aps: list[np.ndarray] = field(default_factory=list)  # AP@R of the queries with R >= 1
    correct: int = 0  # k-NN votes won by the query's label


def _tally(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (),
    knn_k: int = 0,
    map_r: bool = False,
) -> _Tally:
    """Run one leave-one-out search deep enough for the requested metrics and sum them
    over query blocks. Empty ks / knn_k = 0 / map_r = False skip that metric."""
    x = _normalised(embeddings)  # [N, d]
    labels = _check_labels(labels, x.shape[0])  # [N]
    R_all = _same_label_others(labels)  # [N]
    k = max([*ks, knn_k, int(R_all.max()) if map_r else 0])
    t = _Tally(queries=int((labels >= 0).sum()), hits=dict.fromkeys(ks, 0))
    if t.queries == 0:
        raise ValueError("labels must contain at least one label >= 0 to have queries")
    for start, D, I in exact_knn(x, k) if k > 0 else ():
        _add_block(t, start, D, I, labels, R_all, knn_k, map_r)
        del D, I  # free this block before the next search: D, I [b, k] may be ~256 MB
    return t


def _add_block(
    t: _Tally,
    start: int,
    D: np.ndarray,
    I: np.ndarray,
    labels: np.ndarray,
    R_all: np.ndarray,
    knn_k: int,
    map_r: bool,
) -> None:
    """Add the neighbours D, I [b, k'] of queries start, start + 1, ... to the tally."""
    q = np.arange(start, start + len(I))  # [b]
    if (labels[q] < 0).any():  # unlabelled items are no queries (copies; else no copy)
        keep = labels[q] >= 0
        q, D, I = q[keep], D[keep], I[keep]
    rel = labels[I] == labels[q][:, None]  # [b', k']
    for K, h in recall_hits(rel, list(t.hits)).items():
        t.hits[K] += h
    if map_r:
        has_r = R_all[q] > 0
        t.aps.append(ap_at_r(rel[has_r], R_all[q][has_r]))
    if knn_k:
        pred = knn_vote(D[:, :knn_k], labels[I[:, :knn_k]])
        t.correct += int((pred == labels[q]).sum())


def _mean(parts: list[np.ndarray]) -> tuple[float, int]:
    """Mean and count of the values of all parts, NaN if none. fsum: the same whatever the
    block size."""
    n = sum(len(p) for p in parts)
    return (math.fsum(np.concatenate(parts).tolist()) / n if n else float("nan")), n


def _same_label_others(labels: np.ndarray) -> np.ndarray:
    """R per item: how many other items share its label (0 for unlabelled items)."""
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return np.where(labels >= 0, counts[inv.ravel()] - 1, 0)


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    """Validate embeddings [N, d] and return them L2-normalised as float32."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be a 2-D array [N, d], N >= 2, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings must be finite (no NaN or inf)")
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))  # [N]
    if (norm == 0).any():
        bad = np.flatnonzero(norm == 0)[:5].tolist()
        raise ValueError(f"embeddings must be non-zero to normalise; zero rows {bad}...")
    return x / norm[:, None].astype(np.float32)  # float32 throughout: no [N, d] float64 copy


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Validate integer labels [N] for N embeddings."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be 1-D, one per embedding ({n}), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (< 0: no label), got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _check_ks(ks: Sequence[int]) -> list[int]:
    """Validate the K of Recall@K: a non-empty list of positive integers."""
    out = [int(K) for K in ks]
    if not out or any(K < 1 for K in out):
        raise ValueError(f"ks must be a non-empty sequence of K >= 1, got {ks}")
    return out


def _check_knn_k(k: int) -> int:
    """Validate the k of the k-NN vote."""
    if k < 1:
        raise ValueError(f"k of the k-NN vote must be >= 1, got {k}")
    return int(k)
