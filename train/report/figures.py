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

from coins.retrieval.atomic import atomic_path

KS = (1, 2, 4, 8)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINES = ("-", "--", ":")  # after the 10 colours of the cycle, the next line style
# points up to which t-SNE uses the exact gradient: on 512 points (2-core CPU) exact took 8 s,
# Barnes-Hut 21 s; exact costs O(N^2) per iteration, so Barnes-Hut wins on larger sets
EXACT_TSNE_MAX = 1000


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
    """Loss per epoch (per step unless every log has epoch records) and fine R@1 per
    evaluation."""
    figure = new_figure(10, 3.6)
    loss_ax, recall_ax = figure.subplots(1, 2)
    unit = "epoch" if all(_records(log, "epoch") for log in logs.values()) else "step"
    for i, (name, log) in enumerate(logs.items()):
        style = {"label": name, "color": f"C{i % 10}", "linestyle": LINES[i // 10 % len(LINES)]}
        records = _records(log, unit)
        loss_ax.plot([r[unit] for r in records], [r["loss"] for r in records], lw=1, **style)
        evals = [(r["epoch"], r["fine"]["recall@1"]) for r in log if _has_fine_eval(r)]
        if evals:
            epochs, recall = zip(*evals, strict=True)
            recall_ax.plot(epochs, 100 * np.asarray(recall), marker="o", markersize=3, **style)
    if unit == "epoch":  # a run evaluated only at its end still shows where that lies
        recall_ax.set_xlim(loss_ax.get_xlim())
    loss_ax.set(xlabel=unit, ylabel="training loss", title="loss")
    recall_ax.set(xlabel="epoch", ylabel="fine R@1 (%)", title="fine R@1 per evaluation")
    _legend(loss_ax, len(logs))
    return figure


def _records(log: Sequence[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """The log's records of one event ("epoch" or "step") that carry a loss."""
    return [r for r in log if r.get("event") == event and "loss" in r]


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
    # the band above 100 % keeps the legend off the bars
    ax.set(ylabel=f"{level} Recall@K (%)", ylim=(0, 118), title=f"{level} Recall@K per run")
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize="small", ncols=len(KS), loc="upper center")
    return figure


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE layout [N,2] of embeddings x [N,D] (PCA init, perplexity <= 30).

    Sets up to EXACT_TSNE_MAX points use the exact gradient, larger ones Barnes-Hut."""
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
