"""A small flat index and the admin route's steps on it (check and log, then apply), for the
write-ahead log, snapshot and live-update tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coins.serve.index.build import build_index
from coins.serve.index.store import SearchIndex

D = 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_index(path: Path, n: int = 50, key: str = "flat") -> Path:
    rng = np.random.default_rng(0)
    ids = np.arange(n, dtype=np.int64)
    rows = [
        {"id": i, "path": f"{i}.png", "coarse": f"c{i % 3}", "fine": f"f{i % 5}"} for i in range(n)
    ]
    build_index(ids, unit(rng.standard_normal((n, D))), rows, path, index_key=key, tune_queries=0)
    return path


def item(i: int, coarse: str = "new") -> tuple[np.ndarray, np.ndarray, list[dict]]:
    v = unit(np.random.default_rng(i).standard_normal((1, D)))
    return np.array([i], np.int64), v, [{"id": i, "coarse": coarse, "fine": None, "sku": i}]


def log_add(index: SearchIndex, i: int, coarse: str = "new") -> None:
    """What the admin route does: check and log, then apply."""
    ids, xb, rows = item(i, coarse)
    index.log.add(ids, xb, rows)
    index.add(ids, xb, rows)


def log_remove(index: SearchIndex, i: int) -> None:
    index.log.remove(np.array([i], np.int64))
    index.remove(np.array([i], np.int64))


def present(index: SearchIndex, ids: list[int]) -> list[bool]:
    return [m is not None for m in index.metadata(np.array(ids, np.int64))]
