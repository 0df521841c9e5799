"""The retrieval grid: each query and its top-k neighbours, framed by whether the label agrees.

One row per query: the query first (framed blue), then its k nearest other items by cosine
similarity, framed green where their label (fine by default) is the query's, red where it is
not, grey where the neighbour has no label. The layout is `retrieval_tiles`, a plain list, so
what the picture shows can be checked without reading pixels.
"""

# FAISS names neighbour ids I; E741 would rename it.
# ruff: noqa: E741

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from coins.retrieval.knn import nearest
from coins.train.report.figures import new_figure

FRAME = {"query": "tab:blue", "match": "tab:green", "miss": "tab:red", "unlabelled": "grey"}


@dataclass(frozen=True)
class Tile:
    """One image of the grid: its place, the item shown, and what its frame says."""

    row: int
    col: int
    index: int  # item index in the data set
    kind: str  # a key of FRAME: query, match, miss or unlabelled

    @property
    def colour(self) -> str:
        return FRAME[self.kind]


def nearest_others(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices [q,k] of the k items nearest each query by inner product, the query excluded;
    ties (within 1e-6) go to the lower index. x [N,D] L2-normalised, queries [q] indices into x."""
    if not 1 <= k < len(x):
        raise ValueError(f"k must be in [1, N - 1] = [1, {len(x) - 1}], got {k}")
    return nearest(x[queries], x, k, exclude=queries)[1]


def pick_queries(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` labelled items (label >= 0) drawn without replacement by a seeded generator."""
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) == 0:
        raise ValueError("no item has a label to judge its neighbours by")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(labelled, size=min(count, len(labelled)), replace=False))


def retrieval_tiles(queries: np.ndarray, I: np.ndarray, labels: np.ndarray) -> list[Tile]:
    """The grid's tiles, row by row: query then neighbours I [q,k], judged by `labels` [N]."""
    if I.ndim != 2 or len(I) != len(queries):
        raise ValueError(f"expected I [q,k] for q = {len(queries)} queries, got {I.shape}")
    tiles = []
    for row, (q, neighbours) in enumerate(zip(queries, I, strict=True)):
        tiles.append(Tile(row, 0, int(q), "query"))
        for col, j in enumerate(neighbours, start=1):
            tiles.append(Tile(row, col, int(j), _judge(labels[q], labels[j])))
    return tiles


def _judge(query_label: int, label: int) -> str:
    if label < 0:
        return "unlabelled"
    return "match" if label == query_label else "miss"


def grid_shape(tiles: list[Tile]) -> tuple[int, int]:
    """(rows, cols) of the grid the tiles fill."""
    return max(t.row for t in tiles) + 1, max(t.col for t in tiles) + 1


def retrieval_grid(
    tiles: list[Tile], image: Callable[[int], Image.Image], title: str = ""
) -> Figure:
    """Draw the tiles (one axes each), `image(index)` giving an item's picture."""
    rows, cols = grid_shape(tiles)
    figure = new_figure(1.1 * cols, 1.1 * rows + 0.3)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for tile in tiles:
        ax = axes[tile.row, tile.col]
        ax.imshow(image(tile.index), interpolation="nearest", cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set(color=tile.colour, linewidth=3)
    axes[0, 0].set_title("query", fontsize="small")
    for col in range(1, cols):
        axes[0, col].set_title(f"#{col}", fontsize="small")
    figure.suptitle(title, fontsize="medium")
    return figure
