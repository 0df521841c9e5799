"""`coins search`: the neighbours of an image, a stored item or a vector, with their metadata.

A query by id reconstructs the item's stored vector and never returns the item itself. A query
by image embeds it with the ONNX model, which must be the one the index was built with.
"""

# FAISS names its results D (scores) and I (ids); E741 would rename I.
# ruff: noqa: E741

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coins.serve.index.filters import Filter, label_filter, parse_filter
from coins.serve.index.store import SearchIndex, UnknownIdError, check_vectors, result_rows


@dataclass(frozen=True)
class Neighbour:
    """One result: rank from 0 (as the HTTP API's `Neighbor`; printed from 1), cosine score,
    id and its metadata row."""

    rank: int
    score: float
    id: int
    metadata: dict[str, Any] | None


def search_index(
    index_dir: str | Path,
    k: int = 10,
    image: str | Path | None = None,
    item_id: int | None = None,
    vector_file: str | Path | None = None,
    model: str | Path | None = None,
    coarse: str | None = None,
    fine: str | None = None,
    filter: Filter | dict[str, Any] | str | None = None,
) -> list[list[Neighbour]]:
    """The k neighbours of each query, from exactly one of `image` (needs `model`), `item_id`
    or `vector_file` (.npy, [D] or [nq, D]); `coarse` / `fine` keep only items of that class,
    `filter` (filters.py, a Filter, its JSON text or object) those it keeps."""
    queries = {"image": image, "id": item_id, "vector-file": vector_file}
    given = [name for name, value in queries.items() if value is not None]
    if len(given) != 1:
        raise ValueError(
            f"expected exactly one query: image, id or vector-file; got {given or 'none'}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if image is not None:
        index, xq = _embed_image(index_dir, Path(image), model)
    else:
        index = SearchIndex.load(index_dir)
        raw = (
            index.reconstruct(np.array([item_id]))  # PQ decodes it off the unit sphere
            if item_id is not None
            else _read_vectors(vector_file)
        )
        xq = check_vectors(raw, index.dim, "query vectors", normalise=True)
    f = _combined(
        parse_filter(filter),
        label_filter(None if coarse is None else [coarse], None if fine is None else [fine]),
    )
    extra = 1 if item_id is not None else 0  # the item itself comes back first: drop it
    D, I = index.search(xq, k + extra, filter=f)
    exclude = None if item_id is None else np.full(len(xq), item_id)
    results = []
    for ids, scores in result_rows(D, I, k, exclude):
        rows = index.metadata(ids)
        results.append(
            [
                Neighbour(r, float(s), int(i), m)
                for r, (s, i, m) in enumerate(zip(scores, ids, rows, strict=True))
            ]
        )
    return results


def _combined(*filters: Filter | None) -> Filter | None:
    """A filter keeping what each given one keeps."""
    given: list[Any] = [f for f in filters if f is not None]
    return None if not given else given[0] if len(given) == 1 else Filter(must=given)


def _embed_image(
    index_dir: str | Path, image: Path, model: str | Path | None
) -> tuple[SearchIndex, np.ndarray]:
    """The index (checked against the model) and the image's embedding [1, D]."""
    from coins.retrieval.data import load_image
    from coins.retrieval.onnx.runner import OnnxEmbedder

    if model is None:
        raise ValueError("a query by image needs the ONNX model the index was built with (--model)")
    embedder = OnnxEmbedder(model)
    index = SearchIndex.load(index_dir)
    index.check_model(embedder.sha256, embedder.dim)
    return index, embedder.embed_images([load_image(image)]).vectors


def _read_vectors(path: str | Path | None) -> np.ndarray:
    assert path is not None
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: expected a .npy file of query vectors ({e})") from e
    return x[None, :] if x.ndim == 1 else x


def format_neighbours(results: list[list[Neighbour]]) -> str:
    """A plain-text table per query: rank, score, id, coarse, fine, path."""
    lines = []
    for q, hits in enumerate(results):
        if len(results) > 1:
            lines.append(f"query {q}")
        lines.append(f"{'rank':>4} {'score':>8} {'id':>10}  {'coarse':<14} {'fine':<14} path")
        for h in hits:
            m = h.metadata or {}
            lines.append(
                f"{h.rank + 1:>4} {h.score:>8.4f} {h.id:>10}  {m.get('coarse') or '-':<14} "
                f"{m.get('fine') or '-':<14} {m.get('path') or '-'}"
            )
    return "\n".join(lines)


def neighbours_json(results: list[list[Neighbour]]) -> list[list[dict[str, Any]]]:
    return [
        [{"rank": h.rank, "score": h.score, "id": h.id, "metadata": h.metadata} for h in hits]
        for hits in results
    ]


__all__ = ["Neighbour", "UnknownIdError", "format_neighbours", "neighbours_json", "search_index"]
