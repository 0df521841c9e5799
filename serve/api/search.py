"""What a search request does, apart from HTTP: filters to allowed ids, the FAISS call under the
read lock, self-exclusion for queries by id, the coarse gate, and neighbours with metadata.

All functions here are blocking; the routes run them in the server's thread pool.
"""

# FAISS names its results D (scores) and I (ids)
# ruff: noqa: E741

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from coins.serve.api.errors import ApiError
from coins.serve.api.observability import ServiceMetrics
from coins.serve.api.schemas import (
    CoarseGuess,
    Filter,
    GateReport,
    ItemMetadata,
    Neighbor,
    QueryResult,
)
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import Index, ServiceState
from coins.serve.index.filters import FilterError
from coins.serve.index.store import result_rows


def normalise(xq: np.ndarray, dim: int) -> np.ndarray:
    """Vectors from outside (a request's, or stored ones, which PQ decodes off the sphere) as
    float32 [nq, dim] of unit norm: the one check and normalisation of the API; 422 on a wrong
    shape, a NaN, an infinity or a zero. Embedded images skip it: the runner's output is
    L2-normalised by contract (tests/retrieval/onnx)."""
    if xq.ndim != 2 or xq.shape[1] != dim:
        raise ApiError(
            422, f"expected query vectors of dimension {dim}, got shape {list(xq.shape)}"
        )
    xq = np.asarray(xq, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        # a NaN or an infinity anywhere in a row, or a square past float32, makes its norm
        # NaN or infinite: the norms alone tell (np.linalg.norm also squares in float32)
        norms = np.sqrt(np.add.reduce(xq * xq, axis=1, keepdims=True))  # [nq, 1]
    if not np.isfinite(norms).all():
        raise ApiError(422, "vectors must be finite: NaN or infinite values (or overflow) found")
    if (norms == 0).any():
        raise ApiError(422, "a query vector is all zeros; cosine similarity is undefined")
    return np.ascontiguousarray(xq / norms)


class SearchCost:
    """CPU seconds per query of recent unfiltered searches (an exponential average over
    requests, metadata and the response included): tells a search cheap enough to answer on
    the event loop, without the thread hop to the pool, from one that would hold the loop too
    long. CPU time, not wall time: on a busy machine the waits for a core do not count."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self.per_query: float | None = None  # unknown until a search was timed

    def observe(self, seconds: float, nq: int) -> None:
        per_query = seconds / max(1, nq)
        old = self.per_query
        self.per_query = per_query if old is None else old + self.weight * (per_query - old)

    def fits(self, nq: int, settings: ServeSettings, state: ServiceState) -> bool:
        """Whether `nq` queries are expected within `settings.inline_search_ms`, and no index
        writer holds the lock (the loop must not wait for one)."""
        if self.per_query is None or state.lock.busy():
            return False
        return 1000 * nq * self.per_query <= settings.inline_search_ms


def _union(arrays: Sequence[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.empty(0, dtype=np.int64)
    return functools.reduce(np.union1d, arrays).astype(np.int64)


def label_ids(
    state: ServiceState, *, coarse: Sequence[str] = (), fine: Sequence[str] = ()
) -> np.ndarray:
    """Ids whose coarse class name is in `coarse` (or fine in `fine`), sorted."""
    parts = [state.ids_where("coarse", c) for c in coarse]
    parts += [state.ids_where("fine", f) for f in fine]
    return _union(parts)


def class_names(index: Index, level: str) -> list[str]:
    """The numbered classes of `level` ("coarse" or "fine") in the index's manifest: the name at
    position n is class number n. Empty when the index numbers none."""
    manifest = index.manifest  # an IndexManifest, or a plain mapping (tests' fakes)
    if isinstance(manifest, dict):
        classes = manifest.get("classes")
    else:
        classes = getattr(manifest, "classes", None)
    return [str(c) for c in (classes or {}).get(level) or ()]


def allowed_ids(state: ServiceState, f: Filter | None) -> np.ndarray | None:
    """The ids (ascending) filter `f` keeps, or None for no filter; 422 naming what in it does
    not fit the index (an unknown field, a value of the wrong type, a range on a string, a
    class number out of range). The index keeps the ids of its last filters until it changes,
    so the search that follows with the same filter reads them again for free."""
    if f is None:
        return None
    index = state.index
    assert index is not None
    try:
        with state.lock.read():
            return np.asarray(index.select(f), dtype=np.int64)
    except FilterError as err:
        raise ApiError(422, str(err)) from None


def knn(
    state: ServiceState,
    metrics: ServiceMetrics,
    xq: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    filter: Filter | None = None,
    exclude: np.ndarray | None = None,
    with_metadata: bool = True,
) -> list[list[Neighbor]]:
    """Top-k neighbours of each row of `xq` [nq, D] among the `allowed` ids that `filter`
    keeps; `exclude` [nq] drops one id per query."""
    found = neighbor_rows(
        state,
        metrics,
        xq,
        k,
        allowed=allowed,
        filter=filter,
        exclude=exclude,
        with_metadata=with_metadata,
    )
    return [[Neighbor.model_validate(n) for n in row] for row in found]


def neighbor_rows(
    state: ServiceState,
    metrics: ServiceMetrics,
    xq: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    filter: Filter | None = None,
    exclude: np.ndarray | None = None,
    with_metadata: bool = True,
    metadata_json: bool = False,
) -> list[list[dict[str, Any]]]:
    """`knn` as plain dicts of the `Neighbor` schema, for the JSON of /v1/search (orjson
    writes them without building a model object per neighbour). With `metadata_json`, each
    neighbour's metadata is its JSON as the index wrote it (an orjson.Fragment, written into
    the answer as it is), or the dict where the index cannot write it."""
    index = state.index
    assert index is not None
    nq = len(xq)
    if allowed is not None and allowed.size == 0:
        return [[] for _ in range(nq)]
    extra = 0 if exclude is None else 1
    kk = max(1, min(k + extra, index.ntotal))
    # with a filter, the index selects (its cached ids) and searches among them, inside
    # FAISS; a filter keeping nothing gives ids -1 only, dropped by result_rows
    try:
        with metrics.time_stage("search"), state.lock.read():
            D, I = index.search(xq, kk, allowed, filter=filter)  # [nq, kk] each
    except FilterError as err:  # a filter that does not fit the index
        raise ApiError(422, str(err)) from None
    rows = result_rows(D, I, k, exclude)
    meta = _metadata(state, metrics, rows, metadata_json) if with_metadata else {}
    out = []
    for ids, scores in rows:
        found = ids.tolist()
        out.append(
            [
                {"id": i, "score": s, "rank": r, "metadata": meta.get(i)}
                for r, (i, s) in enumerate(zip(found, scores.tolist(), strict=True))
            ]
        )
    return out


def _metadata(
    state: ServiceState,
    metrics: ServiceMetrics,
    rows: list[tuple[np.ndarray, np.ndarray]],
    as_json: bool = False,
) -> dict[int, Any]:
    """The metadata of every id in `rows`, in one lookup (ids shared by queries once), as
    dicts; `as_json`: as orjson Fragments of the JSON the index writes (`metadata_json`),
    or the dicts where it cannot (a row whose `extra` SQLite does not read as JSON)."""
    ids = _row_ids(rows)
    if ids.size == 0:
        return {}
    index = state.index
    assert index is not None
    if as_json:
        try:
            with metrics.time_stage("metadata"), state.lock.read():
                texts = index.metadata_json(ids)
            return {i: orjson.Fragment(m) for i, m in zip(ids.tolist(), texts, strict=True) if m}
        except sqlite3.OperationalError:
            pass  # the dicts below
    with metrics.time_stage("metadata"), state.lock.read():
        found = index.metadata(ids)
    return {i: metadata_dict(i, m) for i, m in zip(ids.tolist(), found, strict=True) if m}


def _row_ids(rows: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The ids of `rows`, each once (int64)."""
    if len(rows) == 1:  # one query: its ids are distinct already
        return rows[0][0].astype(np.int64, copy=False)
    return np.unique(np.concatenate([i for i, _ in rows] or [np.empty(0, np.int64)]))


COLUMNS = ("id", "path", "coarse", "fine")  # the metadata store's own columns


def metadata_dict(id_: int, row: dict[str, Any]) -> dict[str, Any]:
    """A metadata row of the index (its own columns, then the extra ones) as the API shows it:
    the fields of `ItemMetadata`."""

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {
        "id": id_,
        "path": text(row.get("path")),
        "coarse": text(row.get("coarse")),
        "fine": text(row.get("fine")),
        "extra": {k: v for k, v in row.items() if k not in COLUMNS},
    }


def item_metadata(id_: int, row: dict[str, Any]) -> ItemMetadata:
    """A metadata row of the index as the API's `ItemMetadata`."""
    return ItemMetadata.model_validate(metadata_dict(id_, row))


def stored_vectors(state: ServiceState, ids: Sequence[int]) -> np.ndarray:
    """Vectors [n, D] of stored items; 404 naming the ids the index does not hold."""
    index = state.index
    assert index is not None
    xid = np.asarray(ids, dtype=np.int64)
    with state.lock.read():
        found = index.metadata(xid)
        missing = [int(i) for i, m in zip(xid, found, strict=True) if m is None]
        if missing:
            raise ApiError(404, f"ids not in the index: {missing[:20]}")
        return np.asarray(index.reconstruct(xid), dtype=np.float32)


def coarse_guesses(probs: np.ndarray, names: list[str] | None, top: int) -> list[list[CoarseGuess]]:
    """The `top` most probable coarse classes of each row of `probs` [N, C], labelled by the
    model's class names (as the index stores them), or by number without names."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]  # [N, top]
    return [
        [
            CoarseGuess(
                index=int(c), label=str(c) if names is None else names[c], probability=float(p[c])
            )
            for c in row
        ]
        for p, row in zip(probs, order, strict=True)
    ]


def gate_report(guesses: list[CoarseGuess], min_prob: float) -> GateReport:
    """Whether gate=coarse restricts a query to its predicted classes `guesses` (the gate_top
    most probable): when they hold at least `min_prob` of the probability together."""
    top = guesses[0]
    together = float(sum(c.probability for c in guesses))
    names = ", ".join(c.label for c in guesses)
    applied = together >= min_prob
    if applied:
        message = f"searched coarse {names} only (p {together:.3f} >= gate_min_prob {min_prob:g})"
    else:
        message = (
            f"not gated: predicted coarse {names} at p {together:.3f} < gate_min_prob "
            f"{min_prob:g}, so every class was searched"
        )
    return GateReport(
        applied=applied,
        label=top.label,
        probability=top.probability,
        searched_probability=together,
        min_prob=min_prob,
        message=message,
    )


def gated_search(
    state: ServiceState,
    metrics: ServiceMetrics,
    xq: np.ndarray,
    k: int,
    guesses: list[list[CoarseGuess]],
    *,
    min_prob: float,
    filter: Filter | None,
    with_metadata: bool,
) -> list[QueryResult]:
    """Search each query only among items of its predicted coarse classes when they are
    probable enough (`gate_report`), else among all; queries grouped by what they search."""
    reports = [gate_report(g, min_prob) for g in guesses]
    groups: dict[tuple[str, ...] | None, list[int]] = {}
    for q, (g, report) in enumerate(zip(guesses, reports, strict=True)):
        key = tuple(sorted(c.label for c in g)) if report.applied else None
        groups.setdefault(key, []).append(q)
    results: list[QueryResult | None] = [None] * len(xq)
    for labels, queries in groups.items():
        gate = None if labels is None else label_ids(state, coarse=labels)
        found = knn(
            state,
            metrics,
            xq[queries],
            k,
            allowed=gate,
            filter=filter,
            with_metadata=with_metadata,
        )
        for q, neighbors in zip(queries, found, strict=True):
            results[q] = QueryResult(
                neighbors=neighbors,
                coarse=guesses[q],
                gated_to=None if labels is None else list(labels),
                gate=reports[q],
            )
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]
