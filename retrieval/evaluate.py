"""Judge an embedding: embed a labelled split, then fine and coarse retrieval metrics over it.

The result has one format everywhere (``coins eval --json``, a run's ``eval.json``):
``{"fine": {"recall@1": .., "recall@2": .., "recall@4": .., "recall@8": .., "map@r": ..,
"knn_acc": ..}, "coarse": {...}}``, fractions in [0, 1]; ``"fine"`` is null for a split
without fine labels.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .atomic import write_json
from .checkpoint import embedder_from_state, load_checkpoint
from .data import RetrievalDataset, TransformedDataset, eval_transform
from .data.split import build_split
from .metrics import retrieval_metrics
from .models import Embedder, EmbedderConfig, Which
from .presets import preset_for_data
from .progress import Progress

Metrics = dict[str, dict[str, float] | None]


@torch.no_grad()
def embed_dataset(
    model: Embedder,
    dataset: RetrievalDataset,
    which: Which = "backbone",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """L2-normalised embeddings [N, D] float32 of every item, in dataset order."""
    was_training = model.training
    model.eval().to(device)
    loader = DataLoader(
        TransformedDataset(dataset, eval_transform(model.config.preprocess)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    chunks = []
    with Progress("embed", len(dataset), enabled=progress) as report:  # a bar or 10-s lines
        for images, *_ in loader:
            chunks.append(model.embed(images.to(device), which).float().cpu())
            report.update(len(images))
    model.train(was_training)
    return torch.cat(chunks).numpy()


def metrics_from_embeddings(
    embeddings: np.ndarray,
    coarse_labels: np.ndarray,
    fine_labels: np.ndarray | None,
    ks: Sequence[int] = (1, 2, 4, 8),
) -> Metrics:
    """Fine and coarse retrieval metrics over one set of embeddings."""
    fine = None
    if fine_labels is not None and (fine_labels >= 0).any():
        fine = retrieval_metrics(embeddings, fine_labels, ks=ks)
    return {"fine": fine, "coarse": retrieval_metrics(embeddings, coarse_labels, ks=ks)}


def evaluate(
    model: Embedder,
    dataset: RetrievalDataset,
    which: Which = "backbone",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> Metrics:
    """Embed `dataset` with `model` and compute its fine and coarse metrics."""
    x = embed_dataset(model, dataset, which, batch_size, device, num_workers, progress)
    return metrics_from_embeddings(x, dataset.coarse_labels, dataset.fine_labels)


def format_table(metrics: Metrics) -> str:
    """A plain-text table: one row per label level, one column per metric, in percent."""
    rows = {level: m for level, m in metrics.items() if m is not None}
    if not rows:
        return "(no metrics)"
    names = list(next(iter(rows.values())))
    lines = ["level   " + "".join(f"{n:>10}" for n in names)]
    for level, m in rows.items():
        lines.append(f"{level:<8}" + "".join(f"{100 * m[n]:>10.2f}" for n in names))
    return "\n".join(lines)


def evaluate_model_on(
    dataset: str,
    split: str = "test",
    checkpoint: str | Path | None = None,
    model_config: EmbedderConfig | None = None,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    which: Which = "backbone",
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
    json_path: str | Path | None = None,
    test_fraction: float | None = None,
    split_by: str | None = None,
    split_seed: int | None = None,
) -> Metrics:
    """`coins eval`: a checkpoint, or a seeded random embedder, on a data set split.

    The random embedder is `model_config`, else that of the data set's preset (for csv and
    folder galleries, of the image kind closest to their first image).

    `test_fraction` > 0 cuts a gallery without splits as `coins train --test-fraction` does
    (retrieval/data/split.py), `split_by` and `split_seed` by default the checkpoint's (its
    training `seed` seeded its split), else item and `seed`. Left None, a checkpoint trained on
    the same data set and root with a test fraction is evaluated on its own run's test split
    (said on stderr); `options` None takes that run's data set options too.
    """
    run: dict[str, Any] = {}
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        model = embedder_from_state(state, checkpoint)
        run = state.get("train_config") or {}
    else:
        config = model_config or preset_for_data(dataset, root, options)[0].model
        torch.manual_seed(seed)
        model = Embedder(config)
    cut = split_of_run(run, dataset, root, options, test_fraction, split_by, split_seed, seed)
    data = build_split(dataset, split, root, *cut)
    metrics = evaluate(model, data, which=which, batch_size=batch_size, device=device)
    if json_path is not None:
        write_json(json_path, metrics)
    return metrics


def split_of_run(
    run: dict[str, Any],
    dataset: str,
    root: str | Path | None,
    options: dict[str, Any] | None,
    test_fraction: float | None,
    split_by: str | None,
    split_seed: int | None,
    seed: int = 0,
) -> tuple[dict[str, Any], float, str, int]:
    """(data set options, test fraction, split_by, split seed) to evaluate a model of the
    training run `run` (its train_config; {} for none) on: those given, else the run's (its
    `seed` seeded its split), and on the data set and root the run trained on, the test
    fraction it cut (said on stderr)."""
    split_by = split_by or run.get("split_by") or "item"
    if split_seed is None:
        split_seed = int(run.get("seed", seed))
    fraction = float(run.get("test_fraction") or 0)
    same = run.get("dataset") == dataset and _same_root(run.get("root"), root)
    if test_fraction is None and fraction > 0 and same:
        test_fraction = fraction
        options = (run.get("dataset_options") or {}) if options is None else options
        print(
            f"coins eval: the checkpoint's own split of {dataset}: test fraction {fraction:g} "
            f"by {split_by}, seed {split_seed} (its training config; --test-fraction 0: "
            "the gallery as it is)",
            file=sys.stderr,
        )
    return options or {}, test_fraction or 0.0, split_by, split_seed


def _same_root(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).resolve() == Path(b).resolve()
