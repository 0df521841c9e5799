"""A search restricted to allowed ids: inside FAISS through an id selector, or exactly.

**[design]** Two strategies, chosen per search by what each would read (`plan`):

- *selector*: the index searches as usual with an `IDSelector` in its `SearchParameters`
  (`SearchParametersIVF` for IVF, in RAM or on disk; `SearchParametersHNSW`; plain
  `SearchParameters` for `IDMap2` over Flat/PQ), nprobe / efSearch scaled by
  MARGIN x ntotal / allowed: a filter keeping 1 item in s leaves 1/s of the candidates a search
  visits, so it visits s times more to find as many; MARGIN more again, as the tuned nprobe is
  the least that reached the target recall unfiltered, and a filter's items are not spread
  over the lists as evenly as all items are.
- *exact*: the allowed vectors are reconstructed and compared with every query (`faiss.knn`).
  When few items are allowed, this reads fewer vectors than the selector search visits (which,
  at 0.1 % of an IVF, would scan every list), and it is exact: the k results come back at any
  selectivity. Never past EXACT_MAX ids (the copy of their vectors).

The selector is an `IDSelectorBitmap` when the allowed ids are small non-negative numbers (a
bitmap of ids up to max(id) no bigger than the id array itself, or 1 MiB), else an
`IDSelectorBatch` (a hash set with a Bloom-like pre-filter; `IDSelectorArray` would test each id
against the whole list). FAISS keeps raw pointers to the selector and to the bitmap: `search`
holds Python references to both until the FAISS call returns.
"""

# FAISS names its results D (scores) and I (ids); E741 would rename I.
# ruff: noqa: E741

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from coins.serve.index.tuning import HNSW_EF_MAX, hnsw_of, ivf_of

_faiss: Any = faiss  # the bundled faiss stubs lack SearchParameters* keywords
BITMAP_MIN_BYTES = 2**20  # a bitmap this small is always fine
HNSW_EXACT_FRACTION = 0.05  # HNSW: exact below this fraction allowed (graph search degrades)
EXACT_MIN = 2048  # always exact up to this many allowed ids
EXACT_MAX = 65_536  # never exact past this many: their vectors are copied (32 MiB at d = 128)
MARGIN = 2.0  # filtered searches visit this many times more than ntotal / allowed


@dataclass(frozen=True)
class Plan:
    """How a filtered search runs, and what it reads."""

    strategy: Literal["exact", "selector"]
    nprobe: int | None = None  # IVF, selector
    ef_search: int | None = None  # HNSW, selector


def plan(index: faiss.Index, allowed: int) -> Plan:
    """Exact when it reads fewer vectors than the selector search would visit."""
    ntotal = max(1, int(index.ntotal))
    scale = MARGIN * ntotal / max(1, allowed)
    ivf = ivf_of(index)
    if ivf is not None:
        nprobe = min(int(ivf.nlist), math.ceil(ivf.nprobe * scale))
        visited = ntotal * nprobe / int(ivf.nlist)
        if allowed <= max(EXACT_MIN, min(EXACT_MAX, visited)):
            return Plan("exact")
        return Plan("selector", nprobe=nprobe)
    hnsw = hnsw_of(index)
    if hnsw is not None:
        if allowed <= max(EXACT_MIN, min(EXACT_MAX, HNSW_EXACT_FRACTION * ntotal)):
            return Plan("exact")
        ef = min(HNSW_EF_MAX, math.ceil(hnsw.hnsw.efSearch * scale))
        return Plan("selector", ef_search=max(ef, hnsw.hnsw.efSearch))
    # flat codes: the selector scans every code, the exact search copies the allowed ones out
    # first (a lookup and a copy each), so it wins only well below ntotal
    exact = allowed <= max(EXACT_MIN, min(EXACT_MAX, ntotal // 8))
    return Plan("exact" if exact else "selector")


def search_allowed(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    allowed: np.ndarray,
    vectors: Callable[[np.ndarray], np.ndarray],
    held: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """D, I [nq, k] of the k nearest among `allowed` (int64, ascending, unique);
    `vectors(ids)` reconstructs stored vectors [n, D] for the exact strategy, and `held(ids)`
    keeps the ids the index holds, when `allowed` may name others (only the exact strategy
    needs that: a selector just never meets them)."""
    nq = len(xq)
    if allowed.size == 0:
        return empty_result(nq, k)
    p = plan(index, len(allowed))
    if p.strategy == "exact":
        if held is not None:
            allowed = held(allowed)
        return exact_search(xq, k, allowed, vectors(allowed))
    sel, keep = id_selector(allowed)
    if p.nprobe is not None:
        params = _faiss.SearchParametersIVF(sel=sel, nprobe=p.nprobe)
    elif p.ef_search is not None:
        params = _faiss.SearchParametersHNSW(sel=sel, efSearch=p.ef_search)
    else:
        params = _faiss.SearchParameters(sel=sel)
    D, I = index.search(xq, k, params=params)
    del sel, keep, params  # alive until here: FAISS held raw pointers to them
    return D, I


def exact_search(
    xq: np.ndarray, k: int, ids: np.ndarray, xb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of xq [nq, D] among xb [n, D] (ids [n]), padded with id -1."""
    D, I = empty_result(len(xq), k)
    kk = min(k, len(ids))
    if kk == 0:
        return D, I
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    d, pos = faiss.knn(xq, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)  # [nq, kk]
    D[:, :kk] = d
    I[:, :kk] = np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
    return D, I


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's padding: score -FLT_MAX (inner product), id -1."""
    D = np.full((nq, k), -np.finfo(np.float32).max, dtype=np.float32)
    return D, np.full((nq, k), -1, dtype=np.int64)


def id_selector(ids: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray | None]:
    """A selector of `ids` (int64, ascending) and the buffer it points into (keep both alive
    while FAISS uses the selector)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    top = int(ids[-1]) if len(ids) else 0
    nbytes = top // 8 + 1
    if len(ids) and ids[0] >= 0 and nbytes <= max(BITMAP_MIN_BYTES, 8 * len(ids)):
        mask = np.zeros(nbytes * 8, dtype=bool)
        mask[ids] = True
        bitmap = np.packbits(mask, bitorder="little")  # bit i of byte j: id 8 j + i
        return faiss.IDSelectorBitmap(nbytes, faiss.swig_ptr(bitmap)), bitmap  # n: bytes
    return faiss.IDSelectorBatch(ids), None
