"""Tune an approximate index's search knob (nprobe, efSearch) to a target k-recall@k.

k-recall@k is the fraction of the exact k nearest neighbours found among the k returned, on
held-out queries. At build time the queries are a sample of the vectors, added to the index
only once tuning is done (`coins.serve.index.build`). The smallest knob value reaching the target is
kept; p50/p99 latency is measured one query at a time, on one thread, with it.
"""

# FAISS names its results D (scores) and I (ids); E741 would rename I.
# ruff: noqa: E741

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from coins.retrieval.knn import nearest
from coins.serve.index.manifest import Tuning

HNSW_EF_MAX = 4096
LATENCY_QUERIES = 300  # single-query searches timed for p50/p99 ...
LATENCY_BUDGET_S = 10.0  # ... or fewer, when they take longer than this (an exact 1M search)
WARMUP = 5


@dataclass(frozen=True)
class Knob:
    """The search-time parameter of an index that trades recall for speed."""

    name: str  # "nprobe" or "efSearch"
    low: int
    high: int


def search_knob(index: faiss.Index) -> Knob | None:
    """nprobe for IVF indexes, efSearch for HNSW ones, None for exact (or unknown) ones."""
    ivf = ivf_of(index)
    if ivf is not None:
        return Knob("nprobe", 1, int(ivf.nlist))
    if hnsw_of(index) is not None:
        return Knob("efSearch", 16, HNSW_EF_MAX)
    return None


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF inside `index` (through IDMap / pre-transforms), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW index inside an IDMap (or `index` itself), or None."""
    inner = inner_index(index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def inner_index(index: faiss.Index) -> faiss.Index:
    """The index inside an IDMap / IDMap2 wrapper, or `index` itself."""
    wrapped: Any = index
    return faiss.downcast_index(wrapped.index) if hasattr(index, "id_map") else index


def set_knob(index: faiss.Index, params: dict[str, int]) -> None:
    """Set nprobe / efSearch on the index itself (the default of every search)."""
    for name, value in params.items():
        if name == "nprobe" and (ivf := ivf_of(index)) is not None:
            ivf.nprobe = int(value)
        elif name == "efSearch" and (hnsw := hnsw_of(index)) is not None:
            hnsw.hnsw.efSearch = int(value)
        else:
            raise ValueError(f"index {type(index).__name__} has no search parameter {name!r}")


def ground_truth(
    xq: np.ndarray, xb: np.ndarray, ids: np.ndarray, k: int, keep: np.ndarray | None = None
) -> np.ndarray:
    """Exact k nearest ids [nq, k] of xq among the rows of xb (ids [nb]) where `keep` [nb]
    is True (all without it); the search, ties included, is `retrieval.knn.nearest`."""
    return ids[nearest(xq, xb, k, allowed=keep)[1]]


def k_recall(I: np.ndarray, gt: np.ndarray) -> float:
    """Mean fraction of each row of gt [nq, k] found in the same row of I [nq, k]."""
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(I, gt, strict=True))
    return hits / gt.size


def tune(
    index: faiss.Index,
    xq: np.ndarray,
    gt: np.ndarray,
    target_recall: float = 0.95,
    exclude: np.ndarray | None = None,
) -> tuple[dict[str, int], Tuning]:
    """Smallest knob value with k-recall@k >= target (k = gt.shape[1]), set on the index.
    `exclude` [nq]: ids of the queries themselves, when the index holds them (leave-one-out:
    each query's own id is dropped from its results, as it is from gt).

    Doubles the knob from its low end until the target is met, then bisects the last step.
    Where even the highest value misses, that value is kept and `reached` is False.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    k = gt.shape[1]
    knob = search_knob(index)
    params: dict[str, int] = {}
    recall = 1.0
    if knob is not None:
        value, recall = _smallest_reaching(index, knob, xq, gt, target_recall, exclude)
        params = {knob.name: value}
        set_knob(index, params)
    elif index.ntotal and not _is_exact(index):
        recall = _recall(index, {}, xq, gt, exclude)
    p50, p99 = latency_ms(index, xq, k)
    tuning = Tuning(
        target_recall=target_recall,
        k=k,
        recall=recall,
        reached=recall >= target_recall,
        p50_ms=p50,
        p99_ms=p99,
        queries=len(xq),
        count=int(index.ntotal),
    )
    return params, tuning


def _smallest_reaching(
    index: faiss.Index,
    knob: Knob,
    xq: np.ndarray,
    gt: np.ndarray,
    target: float,
    exclude: np.ndarray | None,
) -> tuple[int, float]:
    """(value, recall) of the smallest knob value reaching `target`, or of knob.high."""
    lo, value = knob.low - 1, knob.low  # lo: known to miss (or below range)
    while True:
        recall = _recall(index, {knob.name: value}, xq, gt, exclude)
        if recall >= target or value >= knob.high:
            break
        lo, value = value, min(2 * value, knob.high)
    if recall < target:
        return value, recall
    best = (value, recall)
    hi = value
    while hi - lo > 1:  # invariant: hi reaches the target, lo does not
        mid = (lo + hi) // 2
        r = _recall(index, {knob.name: mid}, xq, gt, exclude)
        if r >= target:
            hi, best = mid, (mid, r)
        else:
            lo = mid
    return best


def _recall(
    index: faiss.Index,
    params: dict[str, int],
    xq: np.ndarray,
    gt: np.ndarray,
    exclude: np.ndarray | None = None,
) -> float:
    k = gt.shape[1]
    if params:
        set_knob(index, params)
    if exclude is None:
        _, I = index.search(xq, k)  # held-out queries: the index does not hold them yet
        return k_recall(I, gt)
    _, I = index.search(xq, k + 1)
    return k_recall(without(I, exclude, k), gt)


def without(I: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row of I [nq, >= k] other than exclude[q] (padded with -1)."""
    out = np.full((len(I), k), -1, dtype=np.int64)
    for q in range(len(I)):
        row = I[q][I[q] != exclude[q]][:k]
        out[q, : len(row)] = row
    return out


def latency_ms(index: faiss.Index, xq: np.ndarray, k: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of single-query searches (k + 1 neighbours) of xq rows, on
    one thread: the serving case (one request per thread), and free of OpenMP start-up and
    spinning, which on a loaded machine add milliseconds to a sub-millisecond search."""
    rows = xq[: LATENCY_QUERIES + WARMUP]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    try:
        start = time.perf_counter()
        for i in range(len(rows)):
            t0 = time.perf_counter()
            index.search(rows[i : i + 1], k + 1)
            times.append(1000 * (time.perf_counter() - t0))
            if t0 - start > LATENCY_BUDGET_S and len(times) >= 2 * WARMUP:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    times = times[WARMUP:] if len(times) > WARMUP else times
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _is_exact(index: faiss.Index) -> bool:
    return isinstance(inner_index(index), faiss.IndexFlat)
