"""Candidate label-free selection scores, computed on the val split of finished runs.

`view R@1 within coarse class` (train/selection.py) picks weights within one method well but
ranks methods wrongly (docs/results.md): it rewards telling every image apart, which the
within-coarse instance methods do best. This script measures, for runs trained with
`--val-fraction`, that score next to candidates that reward *grouping* instead, and prints each
one's Spearman correlation with test fine R@1 (read once, from the run's eval.json):

- `view`: view R@1 within coarse class (the current score).
- `stability`: clustering stability (Ben-Hur, Elisseeff and Guyon, PSB 2002; Lange, Roth,
  Braun and Buhmann, Neural Computation 2004). Inside each coarse class, k-means on two
  overlapping random 80 % subsamples, each on its own augmented view and k-means seed; the
  adjusted Rand index of the two labellings on the shared items, averaged over k in KS and
  over coarse classes weighted by size. An embedding that groups the images of a coarse class
  into sub-groups (fine classes, if it is any good) clusters the same way each time; one that
  spreads every image evenly (instance discrimination alone) has no preferred partition, so
  the two runs disagree. Needs images and coarse labels only, and classes of tens of images.
- `knn_overlap`: mean Jaccard overlap of the 10 nearest same-coarse neighbours of an image
  found with view A and with view B (neighbourhoods that survive augmentation).
- `coarse_r1`, `coarse_map`: coarse R@1 and MAP@R of the val split (coarse labels only).
- `rankme`: RankMe (Garrido, Balestriero, Najman and LeCun, ICML 2023), the effective rank of
  the val embeddings (exp of the entropy of the normalised singular values).

    python benchmarks/label_free_scores.py /work/runs/fm1 /work/runs/fm2 [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from scipy.stats import spearmanr

from coins.retrieval.checkpoint import load_embedder
from coins.retrieval.configs import Augment
from coins.retrieval.data import build_dataset
from coins.retrieval.data.holdout import holdout
from coins.retrieval.evaluate import embed_dataset
from coins.retrieval.metrics import recall_at_k
from coins.train.selection import embed_views, view_recall_at_1

KS = (2, 4, 8)  # clusters per coarse class: the user does not know how many fine classes
SUBSAMPLE = 0.8
REPEATS = 3
FEW = (2, 3, 5, 10)  # fine labels per fine class on the val split, for `few_label_draws`
DRAWS = 50


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """ARI of two labellings of the same items (Hubert and Arabie, 1985)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    n = len(a)
    total, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    return 0.0 if top == expected else (total - expected) / (top - expected)


def kmeans_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


def cluster_stability(xa: np.ndarray, xb: np.ndarray, coarse: np.ndarray) -> float:
    """Mean ARI between k-means of two 80 % subsamples (view A vs view B), within coarse."""
    rng = np.random.default_rng(0)
    scores, weights = [], []
    for c in np.unique(coarse):
        members = np.flatnonzero(coarse == c)
        if len(members) < 10 * max(KS):
            continue
        values = []
        for k in KS:
            for r in range(REPEATS):
                n = len(members)
                s1 = rng.choice(n, int(SUBSAMPLE * n), replace=False)
                s2 = rng.choice(n, int(SUBSAMPLE * n), replace=False)
                l1 = np.full(n, -1)
                l2 = np.full(n, -1)
                l1[s1] = kmeans_labels(xa[members[s1]], k, seed=2 * r)
                l2[s2] = kmeans_labels(xb[members[s2]], k, seed=2 * r + 1)
                shared = (l1 >= 0) & (l2 >= 0)
                values.append(adjusted_rand_index(l1[shared], l2[shared]))
        scores.append(float(np.mean(values)))
        weights.append(len(members))
    if not scores:
        return float("nan")
    return float(np.average(scores, weights=weights))


def knn_overlap(xa: np.ndarray, xb: np.ndarray, coarse: np.ndarray, k: int = 10) -> float:
    overlaps = []
    for c in np.unique(coarse):
        members = np.flatnonzero(coarse == c)
        if len(members) <= k + 1:
            continue
        na = np.argsort(-(xa[members] @ xa[members].T), axis=1)[:, 1 : k + 1]
        nb = np.argsort(-(xb[members] @ xb[members].T), axis=1)[:, 1 : k + 1]
        for row_a, row_b in zip(na, nb, strict=True):
            inter = len(np.intersect1d(row_a, row_b))
            overlaps.append(inter / (2 * k - inter))
    return float(np.mean(overlaps)) if overlaps else float("nan")


def rankme(x: np.ndarray) -> float:
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def few_label_draws(x: np.ndarray, fine: np.ndarray) -> dict[int, list[float]]:
    """Fine R@1 among n labelled val rows per fine class, for DRAWS random draws of the rows.

    The draws depend only on the val split, so every run of one seed sees the same ones.
    """
    rng = np.random.default_rng(0)
    classes = [np.flatnonzero(fine == f) for f in np.unique(fine[fine >= 0])]
    out: dict[int, list[float]] = {}
    for n in FEW:
        usable = [members for members in classes if len(members) >= n]
        if not usable:
            continue  # no fine class has n labelled val rows
        draws = []
        for _ in range(DRAWS):
            rows = np.concatenate([rng.choice(members, n, replace=False) for members in usable])
            draws.append(100 * recall_at_k(x[rows], fine[rows], ks=(1,))[1])
        out[n] = draws
    return out


def choice_hits(rows: list[dict], pick: str) -> tuple[int, int]:
    """Over seeds (and label draws for a `few` score): how often the run with the highest
    `pick` is within 1 point of the seed's best test fine R@1."""
    hits = total = 0
    for seed in sorted({r["seed"] for r in rows}):
        rs = [r for r in rows if r["seed"] == seed]
        if len(rs) < 2:
            continue
        best = max(r["test_fine_r1"] for r in rs)
        if pick.startswith("few"):
            n = int(pick[3:])
            for d in range(DRAWS):
                chosen = max(rs, key=lambda r: r["few"][n][d])
                hits += chosen["test_fine_r1"] >= best - 1
                total += 1
        else:
            chosen = max(rs, key=lambda r: r[pick])
            hits += chosen["test_fine_r1"] >= best - 1
            total += 1
    return hits, total


@functools.cache
def val_split(dataset: str, root: str | None, options: str, fraction: float, seed: int) -> Any:
    """The held-out split of a run, built once per data set and seed (runs share them)."""
    full = build_dataset(dataset, "train", root, **json.loads(options))
    return holdout(full, fraction, seed)[1]


def scores_of(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "eval.json").read_text())
    val = val_split(
        config["dataset"], config["root"], json.dumps(config["dataset_options"], sort_keys=True),
        config["val_fraction"], config["seed"],
    )  # fmt: skip
    model = load_embedder(run / "checkpoint.pt")
    augment = Augment(**config["augment"])
    xa, xb = (embed_views(model, val, augment, s) for s in (0, 1))
    x = embed_dataset(model, val, progress=False)
    coarse = val.coarse_labels
    return {
        "run": run.name,
        "method": config["method"],
        "dataset": config["dataset"],
        "seed": config["seed"],
        "test_fine_r1": 100 * metrics["fine"]["recall@1"],
        "view": 100 * view_recall_at_1(xa, xb, coarse),
        "stability": 100 * cluster_stability(xa, xb, coarse),
        "knn_overlap": 100 * knn_overlap(xa, xb, coarse),
        "rankme": rankme(x),
        "coarse_r1": 100 * metrics["val"]["coarse"]["recall@1"],
        "coarse_map": 100 * metrics["val"]["coarse"]["map@r"],
        "val_fine_r1": 100 * metrics["val"]["fine"]["recall@1"],
        "few": few_label_draws(x, val.fine_labels) if val.fine_labels is not None else {},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="sweep folders of --val-fraction runs")
    p.add_argument(
        "--json",
        type=Path,
        help="also write every run's scores here (runs already in it are read back)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = [d for f in args.folders for d in sorted(f.iterdir()) if (d / "eval.json").is_file()]
    done = {}  # runs scored by an earlier call with the same --json are read back, not redone
    if args.json and args.json.is_file():
        done = {r["path"]: r for r in json.loads(args.json.read_text())}
    rows = []
    for run in runs:
        row = done.get(str(run.resolve())) or {"path": str(run.resolve()), **scores_of(run)}
        row["few"] = {int(n): draws for n, draws in row["few"].items()}  # JSON keys are strings
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "few"}), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    keys = ("view", "stability", "knn_overlap", "rankme", "coarse_r1", "coarse_map", "val_fine_r1")
    for dataset in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == dataset and r["method"] != "opt"]
        print(f"\n{dataset}: {len(rs)} runs of coarse-label methods")
        print("| run | test fine R@1 | " + " | ".join(keys) + " |")
        print("|---|---|" + "---|" * len(keys))
        for r in sorted(rs, key=lambda r: -r["test_fine_r1"]):
            cells = " | ".join(f"{r[k]:.1f}" for k in keys)
            print(f"| `{r['run']}` | {r['test_fine_r1']:.1f} | {cells} |")
        if len(rs) > 2:
            test = [r["test_fine_r1"] for r in rs]
            rho = {k: spearmanr([r[k] for r in rs], test).statistic for k in keys}
            cells = ", ".join(f"{k} {v:.2f}" for k, v in rho.items())
            print(f"Spearman rho with test fine R@1: {cells}")
        picks = [*keys, *(f"few{n}" for n in FEW if all(n in r["few"] for r in rs))]
        for method in [None, *sorted({r["method"] for r in rs})]:
            group = [r for r in rs if method is None or r["method"] == method]
            if len({r["run"] for r in group}) == len({r["seed"] for r in group}):
                continue  # one configuration per seed: nothing to choose
            cells = []
            for pick in picks:
                hits, total = choice_hits(group, pick)
                cells.append(f"{pick} {hits}/{total}")
            print(
                f"choice within 1 point of the best ({method or 'all methods'}): "
                + ", ".join(cells)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
