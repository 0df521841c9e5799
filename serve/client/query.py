"""`coins query`: ask a running server for the neighbours of images or stored ids, or measure
Recall@K through it (by stored ids, or by sending a data set's images)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coins.serve.client.http import SearchClient
from coins.serve.client.recall import format_results, recall_by_ids, recall_by_images


def query_server(
    url: str,
    *,
    images: Sequence[str | Path] = (),
    ids: Sequence[int] = (),
    k: int = 10,
    gate: str = "none",
    recall: bool = False,
    dataset: str | None = None,
    split: str = "test",
    root: str | Path | None = None,
    dataset_options: dict[str, Any] | None = None,
    limit: int | None = None,
    wait: float = 0,
    filter: str | Mapping[str, Any] | None = None,
    gate_min_prob: float | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics (Recall@K with `recall`, else none) and results, each with its `query`.

    Exactly one of `images`, `ids` or `recall`; `recall` with a `dataset` sends that split's
    images (decoding and the model on the path), without one it queries every stored id.
    `filter` (JSON text or a decoded object, the API's format) restricts image and id queries;
    `gate_min_prob` overrides the server's threshold of `gate="coarse"`. `wait` > 0 polls the
    server's readiness that many seconds first.
    """
    if not recall and bool(images) == bool(ids):
        raise ValueError("expected query images or ids (or recall), exactly one of them")
    if isinstance(filter, str):
        try:
            filter = json.loads(filter)
        except json.JSONDecodeError as e:
            raise ValueError(f"--filter: not valid JSON ({e})") from None
    options: dict[str, Any] = {} if filter is None else {"filter": filter}
    with SearchClient(url) as client:
        if wait > 0:
            client.wait_ready(wait)
        if recall and dataset is not None:
            from coins.retrieval.data import build_dataset

            data = build_dataset(dataset, split, root, **(dataset_options or {}))
            return recall_by_images(client, data, limit=limit, gate=gate)
        if recall:
            return recall_by_ids(client, limit=limit)
        if images:
            results = client.search_images(
                list(images), k=k, gate=gate, gate_min_prob=gate_min_prob, **options
            )
            queries: list[dict[str, Any]] = [{"image": str(p)} for p in images]
        else:
            results = client.search_ids(list(ids), k=k, **options)
            queries = [{"id": i} for i in ids]
    return {}, [{"query": q, **r} for q, r in zip(queries, results, strict=True)]


def format_answer(metrics: dict[str, float], results: list[dict[str, Any]]) -> str:
    """Recall@K lines (if any), then a few queries with their first neighbours."""
    lines = [
        f"queries    {int(v)}" if key == "queries" else f"{key:<10} {v:.4f}"
        for key, v in metrics.items()
    ]
    return "\n".join([*lines, format_results(results)])
