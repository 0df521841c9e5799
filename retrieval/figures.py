"""Figures of runs: training curves, Recall@K bars, and the embedding map (t-SNE).

Every figure is a `matplotlib.figure.Figure` drawn on the Agg canvas, never registered with
pyplot: nothing global stays open, and a figure is freed once `save_png` has written it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from .atomic import atomic_path

KS = (1, 2, 4, 8)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXACT_TSNE_MAX = 200  # points up to which t-SNE uses the exact gradient


def new_figure(width: float, height: float) -> Figure:
    """A figure of width x height inches on the Agg canvas, with a constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write `figure` as a PNG atomically, then clear it (its artists are freed)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    figure.clear()
    return path


def training_curves(logs: Mapping[str, Sequence[dict[str, Any]]]) -> Figure:
    """Loss per epoch (per step when a log has no epoch records) and fine R@1 per evaluation."""
    figure = new_figure(10, 3.6)
    loss_ax, recall_ax = figure.subplots(1, 2)
    for name, log in logs.items():
        x, loss, unit = _loss_series(log)
        loss_ax.plot(x, loss, label=name, linewidth=1)
        evals = [(r["epoch"], r["fine"]["recall@1"]) for r in log if _has_fine_eval(r)]
        if evals:
            epochs, recall = zip(*evals, strict=True)
            recall_ax.plot(epochs, 100 * np.asarray(recall), marker="o", markersize=3, label=name)
    loss_ax.set(xlabel=unit, ylabel="training loss", title="loss")
    recall_ax.set(xlabel="epoch", ylabel="fine R@1 (%)", title="fine R@1 per evaluation")
    _legend(loss_ax, len(logs))
    return figure


def _loss_series(log: Sequence[dict[str, Any]]) -> tuple[list[float], list[float], str]:
    epochs = [r for r in log if r.get("event") == "epoch" and "loss" in r]
    if epochs:
        return [r["epoch"] for r in epochs], [r["loss"] for r in epochs], "epoch"
    steps = [r for r in log if r.get("event") == "step" and "loss" in r]
    return [r["step"] for r in steps], [r["loss"] for r in steps], "step"


def _has_fine_eval(record: dict[str, Any]) -> bool:
    return record.get("event") == "eval" and isinstance(record.get("fine"), dict)


def _legend(ax: Axes, entries: int) -> None:
    if entries:
        ax.legend(fontsize="x-small", ncols=1 + entries // 9)


def recall_bars(recalls: Mapping[str, Mapping[str, float]], level: str = "fine") -> Figure:
    """Grouped bars: Recall@1/2/4/8 (percent) of each run, `recalls[run]["recall@K"]`."""
    names = list(recalls)
    figure = new_figure(max(6.0, 0.45 * len(names) * len(KS) / 2), 3.6)
    ax = figure.subplots()
    width = 0.8 / len(KS)
    x = np.arange(len(names))
    for j, k in enumerate(KS):
        values = [100 * recalls[n][f"recall@{k}"] for n in names]
        ax.bar(x + (j - (len(KS) - 1) / 2) * width, values, width, label=f"R@{k}")
    ax.set_xticks(x, names, rotation=45 if len(names) > 4 else 0, ha="right", fontsize="small")
    ax.set(ylabel=f"{level} Recall@K (%)", ylim=(0, 100), title=f"{level} Recall@K per run")
    ax.legend(fontsize="small", ncols=len(KS))
    return figure


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE layout [N,2] of embeddings x [N,D] (PCA init, perplexity <= 30).

    Small sets use the exact gradient: Barnes-Hut only pays off from a few hundred points."""
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"t-SNE needs embeddings [N,D] with N >= 3, got shape {x.shape}")
    perplexity = min(30.0, (len(x) - 1) / 3)
    method = "exact" if len(x) <= EXACT_TSNE_MAX else "barnes_hut"
    tsne = TSNE(2, perplexity=perplexity, init="pca", method=method, random_state=seed)
    return np.asarray(tsne.fit_transform(x), dtype=np.float32)


def embedding_map(
    xy: np.ndarray, labels: Mapping[str, np.ndarray | None], title: str = ""
) -> Figure:
    """One scatter of the 2-D layout xy [N,2] per label level, coloured by that label
    (grey where an item has none, label -1)."""
    levels = {level: y for level, y in labels.items() if y is not None}
    figure = new_figure(4.2 * len(levels), 4.2)
    axes = np.atleast_1d(figure.subplots(1, len(levels)))
    for ax, (level, y) in zip(axes, levels.items(), strict=True):
        known = y >= 0
        classes = int(y.max()) + 1 if known.any() else 1
        cmap = "tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo"
        ax.scatter(*xy[~known].T, s=4, c="lightgrey", linewidths=0)
        ax.scatter(*xy[known].T, s=4, c=y[known], cmap=cmap, vmin=0, vmax=classes - 1)
        ax.set(title=f"{title}: {level} label ({classes} classes)", xticks=[], yticks=[])
    return figure
