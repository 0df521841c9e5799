"""`coins eval --index DIR --model MODEL.onnx`: Recall@K, MAP@R and kNN accuracy of an index.

The same metrics as `coins eval` of the checkpoint (leave-one-out over the gallery, exact
search, `metrics_from_embeddings`), computed from the ONNX model's vectors as the index holds
them: reconstructed from an index that stores them exactly (Flat, IVF-Flat, HNSW-Flat), or the
gallery re-embedded with the model where the index stores only codes (PQ, SQ). Labels are the
class names of the metadata database: equal names, equal labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from coins.retrieval.atomic import write_json
from coins.retrieval.evaluate import Metrics, metrics_from_embeddings
from coins.serve.index.store import SearchIndex
from coins.serve.index.tuning import inner_index, ivf_of

EXACT_STORAGE = (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat)


def evaluate_index(
    index_dir: str | Path,
    model: str | Path,
    ks: Sequence[int] = (1, 2, 4, 8),
    reembed: bool = False,
    json_path: str | Path | None = None,
) -> Metrics:
    """Fine and coarse metrics of the gallery of `index_dir`, embedded by `model` (whose hash
    must match the index's). `reembed` embeds the gallery again even when the index stores
    the vectors exactly."""
    from coins.retrieval.onnx.runner import OnnxEmbedder

    embedder = OnnxEmbedder(model)
    index = SearchIndex.load(index_dir)
    index.check_model(embedder.sha256, embedder.dim)
    ids, coarse, fine = index.labels()
    if reembed or not stores_exact_vectors(index):
        xb = _reembed(index, embedder, ids)
    else:
        xb = index.reconstruct(ids)
    metrics = metrics_from_embeddings(xb, label_numbers(coarse), label_numbers(fine), ks=ks)
    if json_path is not None:
        write_json(json_path, metrics)
    return metrics


def stores_exact_vectors(index: SearchIndex) -> bool:
    """Whether `reconstruct` returns the added vectors bit for bit."""
    ivf = ivf_of(index.index)
    inner = ivf if ivf is not None else inner_index(index.index)
    return isinstance(inner, EXACT_STORAGE)


def label_numbers(names: Sequence[str | None]) -> np.ndarray:
    """Class names as int64 labels (-1 for None), numbered in sorted order."""
    classes = sorted({n for n in names if n is not None})
    number = {n: i for i, n in enumerate(classes)}
    return np.array([-1 if n is None else number[n] for n in names], dtype=np.int64)


def _reembed(index: SearchIndex, embedder: Any, ids: np.ndarray) -> np.ndarray:
    """Embed the index's gallery again from its recorded source; rows follow `ids`."""
    from coins.retrieval.onnx.runner import gallery_source

    source = dict(index.manifest.source)
    kind = source.get("kind")
    if kind == "dataset":
        gallery = gallery_source(
            source["dataset"], source.get("split"), source.get("root"), source.get("options")
        )
    elif kind == "images":
        gallery = gallery_source(images=source["root"], split=source.get("split"))
    elif kind == "manifest":
        gallery = gallery_source(manifest=source["path"], split=source.get("split"))
    else:
        raise ValueError(f"{index.index_dir}: cannot re-embed a gallery from source {source!r}")
    position = {int(i): p for p, i in enumerate(gallery.ids)}
    missing = [int(i) for i in ids if int(i) not in position]
    if missing:
        raise ValueError(f"{index.index_dir}: ids not in the source gallery: {missing[:10]}")
    result = embedder.embed_dataset(gallery)
    return np.asarray(result.vectors)[[position[int(i)] for i in ids]]
