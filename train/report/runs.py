"""`coins report`: figures of one or more runs, as PNG files and one self-contained HTML page.

From each run directory (written by `coins train`): `metrics.jsonl` gives the training curves,
`eval.json` the Recall@K bars, and `checkpoint.pt` the embeddings of the evaluation split for
the embedding map (t-SNE) and the retrieval grid. `index.html` embeds every PNG as base64, so
the page alone is the whole report.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coins.retrieval.atomic import atomic_path
from coins.retrieval.checkpoint import load_embedder
from coins.retrieval.data import RetrievalDataset, build_dataset
from coins.retrieval.evaluate import embed_dataset
from coins.train.report.figures import (
    KS,
    embedding_map,
    recall_bars,
    save_png,
    training_curves,
    tsne_2d,
)
from coins.train.report.grid import nearest_others, pick_queries, retrieval_grid, retrieval_tiles
from coins.train.run_dir import CHECKPOINT, Run, read_run


@dataclass(frozen=True)
class Panel:
    """A written PNG and what it shows."""

    path: Path
    caption: str


def run_names(paths: Sequence[Path]) -> list[str]:
    """Directory names, made unique with the parent's name where two runs share one."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}-{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    dataset: str | None = None,
    split: str | None = None,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    queries: int = 8,
    k: int = 5,
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """Write the figures of `run_dirs` and `index.html` into `out_dir`; return the page's path.

    The data set and split default to each run's own (`config.json`: dataset, its options,
    eval_split)."""
    if not run_dirs:
        raise ValueError("expected at least one run directory")
    if queries < 1 or k < 1:
        raise ValueError(f"expected queries >= 1 and k >= 1, got queries={queries}, k={k}")
    paths = [Path(p) for p in run_dirs]
    runs = [read_run(p, n) for p, n in zip(paths, run_names(paths), strict=True)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = summary_figures(runs, out)
    cache: dict[str, RetrievalDataset] = {}
    for run in runs:
        data = run_dataset(run, cache, dataset, split, root, options)
        figures += run_figures(run, data, out, queries, k, max_points, seed)
    page = out / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text(render_html(runs, figures))
    return page


def summary_figures(runs: Sequence[Run], out: Path) -> list[Panel]:
    """Training curves of every run and, where runs have eval.json, their fine Recall@K."""
    figures = [
        Panel(
            save_png(training_curves({r.name: r.log for r in runs}), out / "curves.png"),
            "Training loss per epoch and fine R@1 at each evaluation (metrics.jsonl).",
        )
    ]
    recalls = {r.name: r.metrics["fine"] for r in runs if r.metrics and r.metrics.get("fine")}
    if recalls:
        figures.append(
            Panel(
                save_png(recall_bars(recalls), out / "recall.png"),
                "Fine Recall@1/2/4/8 of each run (eval.json), in percent.",
            )
        )
    return figures


def run_dataset(
    run: Run,
    cache: dict[str, RetrievalDataset],
    dataset: str | None,
    split: str | None,
    root: str | Path | None,
    options: dict[str, Any] | None,
) -> RetrievalDataset:
    """The data set a run is shown on: the one named, else its own; built once per setting."""
    name = dataset or run.config.get("dataset", "synthetic-patches")
    if dataset is None:
        root = run.config.get("root") if root is None else root
        if options is None:
            options = run.config.get("dataset_options") or {}
    split = split or run.config.get("eval_split", "test")
    key = json.dumps([name, split, str(root), options or {}], sort_keys=True)
    if key not in cache:
        cache[key] = build_dataset(name, split=split, root=root, **(options or {}))
    return cache[key]


def run_figures(
    run: Run,
    data: RetrievalDataset,
    out: Path,
    queries: int,
    k: int,
    max_points: int,
    seed: int,
) -> list[Panel]:
    """The embedding map and the retrieval grid of one run's checkpoint on `data`."""
    x = embed_dataset(load_embedder(run.path / CHECKPOINT), data, progress=False)  # [N,D]
    shown = _subsample(len(x), max_points, seed)
    fine = None if data.fine_labels is None else data.fine_labels[shown]
    layout = tsne_2d(x[shown], seed)
    labels = {"coarse": data.coarse_labels[shown], "fine": fine}
    where = f"{data.name}/{data.split}"
    emb = save_png(embedding_map(layout, labels, run.name), out / f"embedding-{run.name}.png")
    level, judge = _grid_labels(data)
    q = pick_queries(judge, queries, seed)
    tiles = retrieval_tiles(q, nearest_others(x, q, min(k, len(x) - 1)), judge)
    grid = retrieval_grid(tiles, data.image, f"{run.name}: top-{k} on {where}")
    return [
        Panel(
            emb, f"{run.name}: t-SNE of {len(shown)} {where} embeddings, by coarse and fine label."
        ),
        Panel(
            save_png(grid, out / f"retrieval-{run.name}.png"),
            f"{run.name}: queries (blue) and their nearest neighbours, green where the {level} "
            "label matches the query's, red where not.",
        ),
    ]


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _grid_labels(data: RetrievalDataset) -> tuple[str, np.ndarray]:
    """Judge neighbours by the fine label; by the coarse one (said so) when there is none."""
    if data.fine_labels is not None and (data.fine_labels >= 0).any():
        return "fine", data.fine_labels
    return "coarse", data.coarse_labels


def render_html(runs: Sequence[Run], figures: Sequence[Panel]) -> str:
    """The report page: a table of the runs' metrics, then every figure inline (base64)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>coins report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "img{max-width:100%}figure{margin:1.5em 0}</style></head><body>",
        "<h1>coins report</h1>",
        _metrics_table(runs),
    ]
    for fig in figures:
        data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
        name = html.escape(fig.path.name)
        parts.append(
            f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{name}">'
            f'<figcaption><a href="{name}">{name}</a>: {html.escape(fig.caption)}</figcaption>'
            "</figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _metrics_table(runs: Sequence[Run]) -> str:
    head = ["run", "method", "seed", *(f"fine R@{k}" for k in KS), "coarse R@1"]
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in runs:
        fine = (r.metrics or {}).get("fine") or {}
        coarse = (r.metrics or {}).get("coarse") or {}
        cells = [r.name, r.config.get("method", ""), r.config.get("seed", "")]
        cells += [_percent(fine.get(f"recall@{k}")) for k in KS]
        cells.append(_percent(coarse.get("recall@1")))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join([*rows, "</table>"])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
