"""Recall@K measured through a running server, as a shop would see it.

`recall_by_ids` asks for the neighbours of every indexed item by id (leave-one-out, the
definition of `coins eval`); `recall_by_images` sends a data set's images over HTTP, so decoding,
preprocessing and the ONNX model are on the path too. A query is a hit at K when one of its K
nearest others has its label; queries without a label are skipped.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image

from coins.retrieval.data import RetrievalDataset
from coins.serve.client.http import SearchClient

PAGE = 10_000  # items per listing request (the server's limit)


def indexed_items(client: SearchClient, limit: int | None = None) -> list[dict[str, Any]]:
    """Metadata of the indexed items in id order (the first `limit` of them)."""
    items: list[dict[str, Any]] = []
    while limit is None or len(items) < limit:
        page = client.items(offset=len(items), limit=PAGE)
        items += page["items"]
        if len(items) >= page["total"] or not page["items"]:
            break
    return items if limit is None else items[:limit]


def _hits(
    label: str | None, neighbors: list[dict[str, Any]], ks: Sequence[int], level: str
) -> list[bool]:
    found = [(n.get("metadata") or {}).get(level) for n in neighbors]
    return [label in found[:K] for K in ks]


def _recall(hits: list[list[bool]], ks: Sequence[int]) -> dict[str, float]:
    n = len(hits)
    return {
        f"recall@{K}": (sum(h[j] for h in hits) / n if n else float("nan"))
        for j, K in enumerate(ks)
    }


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def recall_by_ids(
    client: SearchClient,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    level: str = "fine",
    batch: int = 256,
    limit: int | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Leave-one-out Recall@K over the indexed items (the first `limit`), and the results of
    the first few queries for display."""
    queries = [it for it in indexed_items(client, limit) if it.get(level) is not None]
    hits: list[list[bool]] = []
    shown: list[dict[str, Any]] = []
    for part in _batches(queries, batch):
        results = client.search_ids([it["id"] for it in part], k=max(ks))
        for item, result in zip(part, results, strict=True):
            hits.append(_hits(item[level], result["neighbors"], ks, level))
            if len(shown) < 3:
                shown.append({"query": item, **result})
    return _recall(hits, ks) | {"queries": float(len(hits))}, shown


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def recall_by_images(
    client: SearchClient,
    dataset: RetrievalDataset,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    level: str = "fine",
    batch: int = 32,
    limit: int | None = None,
    gate: str = "none",
    gate_top: int = 1,
    gate_min_prob: float | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Recall@K of `dataset`'s images sent as PNG files; an image that is itself indexed (same
    id) is dropped from its own results, so an indexed split gives leave-one-out recall. With
    gate="coarse", `gated` is the fraction of queries the gate restricted."""
    names = dataset.fine_classes if level == "fine" else dataset.coarse_classes
    labels = dataset.fine_labels if level == "fine" else dataset.coarse_labels
    n = len(dataset) if limit is None else min(limit, len(dataset))
    hits: list[list[bool]] = []
    shown: list[dict[str, Any]] = []
    gated = 0
    for part in _batches(list(range(n)), batch):
        images = [png_bytes(dataset.image(i)) for i in part]
        results = client.search_images(
            images, k=max(ks) + 1, gate=gate, gate_top=gate_top, gate_min_prob=gate_min_prob
        )
        for i, result in zip(part, results, strict=True):
            gated += bool((result.get("gate") or {}).get("applied"))
            label = None if labels is None or labels[i] < 0 or names is None else names[labels[i]]
            if label is None:
                continue
            others = [nb for nb in result["neighbors"] if nb["id"] != int(dataset.ids[i])]
            hits.append(_hits(label, others[: max(ks)], ks, level))
            if len(shown) < 3:
                coarse = dataset.coarse_classes[int(dataset.coarse_labels[i])]
                query = {
                    "image": f"{i} of the data set, sent as PNG",
                    "id": int(dataset.ids[i]),
                    "coarse": coarse,
                    level: label,
                }
                shown.append({"query": query, **result, "neighbors": others})
    metrics = _recall(hits, ks) | {"queries": float(len(hits))}
    if gate == "coarse":
        metrics["gated"] = gated / max(1, n)
    return metrics, shown


def format_results(shown: list[dict[str, Any]], top: int = 5) -> str:
    """A few queries and their first neighbours, one line each; * where the fine label matches.
    An image query says its predicted coarse class and what the gate did."""
    lines = []
    for result in shown:
        q = result["query"]
        labels = f"(coarse {q.get('coarse')}, fine {q.get('fine')})"
        if "image" in q:
            lines.append(f"query image {q['image']}" + (f" {labels}:" if "fine" in q else ":"))
        else:
            lines.append(f"query id {q.get('id')} {labels}:")
        lines += _predicted(result)
        for rank, nb in enumerate(result["neighbors"][:top], start=1):
            meta = nb.get("metadata") or {}
            mark = "*" if q.get("fine") is not None and meta.get("fine") == q.get("fine") else " "
            lines.append(
                f"  {mark} #{rank} id {nb['id']:>8} score {nb['score']:.4f} "
                f"coarse {meta.get('coarse')} fine {meta.get('fine')}"
            )
    return "\n".join(lines)


def _predicted(result: dict[str, Any]) -> list[str]:
    """The predicted coarse class of an image query, and the gate's decision, as lines."""
    gate, coarse = result.get("gate"), result.get("coarse")
    if gate:
        return [
            f"  predicted coarse {gate['label']} (p {gate['probability']:.3f}); {gate['message']}"
        ]
    if coarse:
        guesses = ", ".join(f"{c['label']} (p {c['probability']:.3f})" for c in coarse)
        return [f"  predicted coarse {guesses}"]
    return []
