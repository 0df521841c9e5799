"""Exact k-nearest-neighbour search by inner product, block by block: the one exact search.

Every retrieval metric needs, for each item, its nearest *other* items (`exact_knn`): the whole
set is the database (xb) and each block of it in turn the queries (xq); the N x N score matrix
is never formed, only one block's [b, k] results. `nearest` is the same search for other
queries (report grids, an index's ground truth), with an optional row to exclude per query
and an optional allowed subset of the database.
"""

# FAISS names its results D (scores) and I (ids); E741 would rename I.
# ruff: noqa: E741

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

TIE_TOL = 1e-6  # scores closer than this are ties, ordered by index (float32 noise is ~1e-7)
MARGIN = 8  # extra neighbours searched beyond k + 1, to see past a tie at the cut-off
BLOCK_BYTES = 256 * 2**20  # one block's D (float32) + I (int64) stays below this
MAX_BLOCK = 4096


def exact_knn(
    x: np.ndarray, k: int, block_size: int | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield `(start, D, I)`: the k' = min(k, N - 1) nearest other items of queries
    `x[start:start + b]`, by inner product (cosine when rows are L2-normalised), D/I [b, k'].

    The query is removed by index, not by rank, since an identical vector may come first.
    Ties: FAISS orders equal scores arbitrarily (and duplicates can differ by float32
    noise), so each row is re-ordered by (-score, index), where scores that follow each
    other within 1e-6 in the descending list form one tie group ordered by index. A row
    whose tie group may run past the searched window is searched again, wider, so the
    order is the same whatever FAISS returned. D is thus non-increasing up to 1e-6.

    A block holds at most 4096 queries and about 256 MB of D + I (b * k' * 12 bytes), so
    no N x N matrix is formed. Arguments are checked here, before the first block.
    """
    xb = _check_x(x)  # [N, d]
    n = xb.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k_out = min(k, n - 1)
    k_search = min(n, k_out + 1 + MARGIN)
    if block_size is None:
        block_size = max(1, min(MAX_BLOCK, BLOCK_BYTES // (k_search * 12)))
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return _blocks(xb, k_out, k_search, block_size)


def _blocks(
    xb: np.ndarray, k_out: int, k_search: int, block_size: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The blocks of exact_knn, searched one at a time as they are consumed."""
    n = xb.shape[0]
    for start in range(0, n, block_size):
        q = np.arange(start, min(start + block_size, n))  # [b]
        # No local names for D, I: the frame must not keep a block alive while the next runs.
        yield (start, *_search_others(xb[q], xb, q, k_out, k_search))


def nearest(
    xq: np.ndarray,
    xb: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """D, I [nq, k']: the k' = min(k, available) rows of xb nearest each row of xq by inner
    product, in the tie order of exact_knn; I holds row numbers of xb.

    `exclude` [nq]: row number of xb that query q never retrieves (itself; -1 for none).
    `allowed`: row numbers of xb (or a bool mask [N]) searched, all rows without it; a copy
    of those rows is searched. Queries go in blocks as in exact_knn.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ValueError(f"expected xq [nq, d] and xb [N, d], got {xq.shape} and {xb.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = np.arange(len(xb)) if allowed is None else np.asarray(allowed)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    # exclusion by position among the searched rows (-1 where the excluded row is not searched)
    drop = np.full(len(xq), -1) if exclude is None else np.asarray(exclude)
    if len(drop) != len(xq):
        raise ValueError(f"expected exclude [nq = {len(xq)}], got {drop.shape}")
    pos = np.searchsorted(rows, drop).clip(max=max(len(rows) - 1, 0))
    drop = np.where((len(rows) > 0) & (rows[pos] == drop), pos, -1)
    db = np.ascontiguousarray(xb if allowed is None else xb[rows], dtype=np.float32)
    n = len(db)
    k_out = min(k, n - int((drop >= 0).any()))
    if k_out < 1:
        return np.empty((len(xq), 0), np.float32), np.empty((len(xq), 0), np.int64)
    k_search = min(n, k_out + 1 + MARGIN)
    block = max(1, min(MAX_BLOCK, BLOCK_BYTES // (k_search * 12)))
    D = np.empty((len(xq), k_out), np.float32)
    I = np.empty((len(xq), k_out), np.int64)
    for s in range(0, len(xq), block):
        b = slice(s, s + block)
        D[b], I[b] = _search_others(xq[b], db, drop[b], k_out, k_search)
    return D, rows[I]


def _check_x(x: np.ndarray) -> np.ndarray:
    """Validate and return x as a C-contiguous float32 [N, d] array."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array [N, d], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"x must have N >= 2 rows to have neighbours, got N = {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"x must have d >= 1 columns, got shape {x.shape}")
    xb = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(xb).all():
        raise ValueError("x must be finite (no NaN or inf) after conversion to float32")
    return xb


def _search_others(
    xq: np.ndarray, xb: np.ndarray, q: np.ndarray, k_out: int, k_search: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k_out nearest rows of xb to queries xq [b, d] other than row q[i] of query i (-1:
    none): D, I [b, k']. Rows whose tie at the cut-off may go on past the searched window
    are searched again, twice as wide."""
    D, I, open_ = _search_once(xq, xb, q, k_out, k_search)
    if open_.any():
        rows = np.flatnonzero(open_)
        wider = min(len(xb), 2 * k_search)
        D[rows], I[rows] = _search_others(xq[rows], xb, q[rows], k_out, wider)
    return D, I


def _search_once(
    xq: np.ndarray, xb: np.ndarray, q: np.ndarray, k_out: int, k_search: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One FAISS search of k_search: D, I [b, k'] in tie order, and the rows left open."""
    D, I = faiss.knn(xq, xb, k_search, metric=faiss.METRIC_INNER_PRODUCT)  # [b, kk]
    if k_search > k_out:  # one entry to spare: the query itself, else the row's last
        D, I = _drop_self(D, I, q)  # [b, kk - 1]
    assert (D[:, :-1] >= D[:, 1:]).all(), "FAISS rows must be sorted by descending score"
    tie = D[:, :-1] - D[:, 1:] <= TIE_TOL  # [b, kk - 2] entry j ties with entry j + 1
    _order_ties(D, I, tie, len(xb))
    # A tie group running from the cut-off to the window's end may go on beyond it.
    open_ = np.asarray(tie[:, k_out - 1 :].all(axis=1) & (k_search < len(xb)))  # [b]
    return D[:, :k_out], I[:, :k_out], open_


def _drop_self(D: np.ndarray, I: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own index from its row (if absent, the row's last entry).

    The query is nearly always first (score 1): then this is a view, with no copy.
    """
    is_self = q[:, None] == I  # [b, kk]
    pos = np.where(is_self.any(axis=1), is_self.argmax(axis=1), I.shape[1] - 1)  # [b]
    for r in np.flatnonzero(pos):  # rare: the query ties with a duplicate, or is absent
        D[r, 1 : pos[r] + 1] = D[r, : pos[r]].copy()  # shift the entries before it right
        I[r, 1 : pos[r] + 1] = I[r, : pos[r]].copy()
    return D[:, 1:], I[:, 1:]


def _order_ties(D: np.ndarray, I: np.ndarray, tie: np.ndarray, n: int) -> None:
    """Order, in place, the rows that hold ties by (tie group, index).

    A new group starts wherever `tie` is False. Rows go by chunks of about 2^20 entries,
    to keep the temporaries small; they are nearly sorted, which the stable sort exploits.
    """
    rows = np.flatnonzero(tie.any(axis=1))
    for chunk in np.array_split(rows, max(1, -(-len(rows) * I.shape[1] // 2**20))):
        key = np.zeros((len(chunk), I.shape[1]), dtype=np.int64)  # [c, kk - 1] group id
        np.cumsum(~tie[chunk], axis=1, out=key[:, 1:])
        key *= n
        key += I[chunk]  # (group, index) as one sort key
        order = np.argsort(key, axis=1, kind="stable")
        D[chunk] = np.take_along_axis(D[chunk], order, axis=1)
        I[chunk] = np.take_along_axis(I[chunk], order, axis=1)
