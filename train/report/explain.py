"""`coins explain`: where several checkpoints look on the same images, and how much.

The picture has one row per image and one column per checkpoint (the image itself first),
each model's spatial attention overlaid on the image as that model sees it. With `measure` on
synthetic-patches, the share of attention mass inside the big- and the small-patch box,
averaged over the split, per checkpoint and per method (mean ± std over its checkpoints).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from coins.retrieval.atomic import write_json
from coins.retrieval.checkpoint import load_checkpoint, load_embedder
from coins.retrieval.data import (
    Preprocess,
    RetrievalDataset,
    TransformedDataset,
    build_dataset,
    eval_transform,
)
from coins.retrieval.models import Embedder
from coins.train.report.attention import (
    PATCHES,
    dataset_attention,
    patch_area,
    patch_boxes,
    patch_mass,
    square_image_size,
    stage_name,
)
from coins.train.report.figures import new_figure, save_png


@dataclass(frozen=True)
class Explained:
    """A checkpoint's model and the run facts the picture and the table name it by."""

    checkpoint: Path
    model: Embedder
    method: str
    seed: int | None
    train_config: dict[str, Any]

    @property
    def label(self) -> str:
        return self.method if self.seed is None else f"{self.method} s{self.seed}"


def load_explained(path: str | Path) -> Explained:
    """Load a checkpoint with its method and seed (from the training config it stores)."""
    state = load_checkpoint(path)
    config = state.get("train_config") or {}
    method = str(state.get("method") or config.get("method") or "unknown")
    return Explained(Path(path), load_embedder(path), method, config.get("seed"), config)


def explain_dataset(
    first: Explained,
    dataset: str | None,
    split: str,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> RetrievalDataset:
    """The named data set, or (dataset None) the one the first checkpoint was trained on."""
    if dataset is None:
        dataset = str(first.train_config.get("dataset") or "synthetic-patches")
        root = first.train_config.get("root") if root is None else root
        if options is None:
            options = first.train_config.get("dataset_options") or {}
    return build_dataset(dataset, split=split, root=root, **(options or {}))


def model_view(dataset: RetrievalDataset, indices: Sequence[int], pre: Preprocess) -> np.ndarray:
    """The images as a model with `pre` sees them, back in [0, 1]: [n,S,S,C] float32."""
    items = TransformedDataset(dataset, eval_transform(pre))
    x = torch.stack([items[i][0] for i in indices])  # type: ignore[misc]  # [n,C,S,S]
    mean, std = torch.tensor(pre.mean)[:, None, None], torch.tensor(pre.std)[:, None, None]
    return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def attention_grid(
    views: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    boxes: np.ndarray | None = None,
) -> Figure:
    """Rows of images: the plain image, then each model's map [n,S,S] over its view [n,S,S,C].

    `views[0]` is the plain column, `views[j + 1]` what model j saw; boxes [n,2,4] (in the
    plain view's pixels) are outlined on the plain column.
    """
    n, cols = len(views[0]), 1 + len(maps)
    figure = new_figure(1.25 * cols, 1.25 * n + 0.5)
    axes = np.asarray(figure.subplots(n, cols, squeeze=False))
    for row in range(n):
        _show(axes[row, 0], views[0][row])
        if boxes is not None:
            _outline(axes[row, 0], boxes[row])
        for j, (view, heat) in enumerate(zip(views[1:], maps, strict=True), start=1):
            _show(axes[row, j], view[row])
            axes[row, j].imshow(heat[row], cmap="jet", alpha=0.5, vmin=0, vmax=heat[row].max())
    for col, title in enumerate(["image", *titles]):
        axes[0, col].set_title(title, fontsize="small")
    return figure


def _show(ax: Axes, image: np.ndarray) -> None:
    ax.imshow(image.squeeze(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax: Axes, boxes: np.ndarray) -> None:
    for (x0, y0, x1, y1), colour in zip(boxes, ("white", "yellow"), strict=False):
        # pixel i spans [i - 0.5, i + 0.5] in imshow coordinates
        rect = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, ls="--")
        ax.add_patch(rect)


@dataclass(frozen=True)
class MassRow:
    """The attention share inside each patch box for one checkpoint, averaged over a split."""

    checkpoint: str
    method: str
    seed: int | None
    stage: str
    big: float
    small: float


def measure(models: Sequence[Explained], data: RetrievalDataset, stage: int) -> list[MassRow]:
    """One MassRow per checkpoint (synthetic-patches only: the boxes are needed)."""
    rows = []
    for m in models:
        mass = patch_mass(m.model, data, stage)
        name = stage_name(m.model, stage)
        rows.append(MassRow(str(m.checkpoint), m.method, m.seed, name, **mass))
    return rows


def summarise(
    rows: Sequence[MassRow], area: dict[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per method: checkpoints n, stage(s), mean and sample std of each patch's share and,
    given the patches' area shares, the lift: share / area (1 = a uniform map)."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r.method for r in rows):
        group = [r for r in rows if r.method == method]
        summary: dict[str, Any] = {"n": len(group), "stage": _stages(group)}
        for patch in PATCHES:
            values = [getattr(r, patch) for r in group]
            summary[f"{patch}_mean"] = statistics.fmean(values)
            summary[f"{patch}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            if area is not None:
                summary[f"{patch}_lift"] = summary[f"{patch}_mean"] / area[patch]
        out[method] = summary
    return out


def _stages(rows: Sequence[MassRow]) -> str:
    return ",".join(dict.fromkeys(r.stage for r in rows))


def format_mass_table(rows: Sequence[MassRow], area: dict[str, float]) -> str:
    """Per checkpoint, then per method (mean ± std), the share in percent and its lift over
    the patch's area share; the area shares last, for reference."""
    lines = [f"{'checkpoint':<44} {'method':<10} {'stage':<8} {'big %':>7} {'small %':>8}"]
    for r in rows:
        name = r.checkpoint if len(r.checkpoint) <= 44 else "..." + r.checkpoint[-41:]
        lines.append(
            f"{name:<44} {r.method:<10} {r.stage:<8} {100 * r.big:>7.1f} {100 * r.small:>8.1f}"
        )
    head = ["method", "n", "stage", "big %", "small %", "big / area", "small / area"]
    lines += ["", "{:<10} {:>2} {:<8} {:>13} {:>13} {:>11} {:>13}".format(*head)]
    for method, s in summarise(rows, area).items():
        big, small = (_percent(s, patch) for patch in PATCHES)
        lifts = f"{s['big_lift']:>11.2f} {s['small_lift']:>13.2f}"
        lines.append(f"{method:<10} {s['n']:>2} {s['stage']:<8} {big:>13} {small:>13} {lifts}")
    big, small = f"{100 * area['big']:.1f}", f"{100 * area['small']:.1f}"
    lines.append(f"{'(area)':<10} {'':>2} {'':<8} {big:>13} {small:>13} {1:>11.2f} {1:>13.2f}")
    return "\n".join(lines)


def _percent(summary: dict[str, Any], patch: str) -> str:
    """The mean share in percent, ± the std where there is more than one checkpoint."""
    mean = f"{100 * summary[f'{patch}_mean']:.1f}"
    return mean if summary["n"] == 1 else f"{mean} ± {100 * summary[f'{patch}_std']:.1f}"


def explain(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    dataset: str | None = None,
    split: str = "test",
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    stage: int = -1,
    images: int = 8,
    measure_mass: bool = False,
    json_path: str | Path | None = None,
) -> dict[str, Any] | None:
    """Draw the attention grid to `out`; with `measure_mass`, return (and write to
    `json_path`) the attention share inside each patch box."""
    if not checkpoints:
        raise ValueError("expected at least one checkpoint")
    if images < 1:
        raise ValueError(f"expected images >= 1, got {images}")
    models = [load_explained(c) for c in checkpoints]
    data = explain_dataset(models[0], dataset, split, root, options)
    if measure_mass:
        patch_boxes(data)  # fail before the slow part: no boxes, or boxes in non-square images
        square_image_size(data)
    save_png(draw(models, data, stage, min(images, len(data))), out)
    if not measure_mass:
        return None
    rows, area = measure(models, data, stage), patch_area(data)
    result = {
        "dataset": data.name,
        "split": data.split,
        "stage": stage,
        "area": area,
        "checkpoints": [dataclasses.asdict(r) for r in rows],
        "methods": summarise(rows, area),
        "table": format_mass_table(rows, area),
    }
    if json_path is not None:
        write_json(json_path, result)
    return result


def draw(models: Sequence[Explained], data: RetrievalDataset, stage: int, n: int) -> Figure:
    """The attention grid of the first n images of `data` under each model."""
    indices = list(range(n))
    first = models[0].model.config.preprocess
    views = [model_view(data, indices, first)]
    maps, titles = [], []
    for m in models:
        views.append(model_view(data, indices, m.model.config.preprocess))
        maps.append(dataset_attention(m.model, data, stage, indices=indices))
        titles.append(f"{m.label}\n{stage_name(m.model, stage)}")
    boxes = getattr(data, "boxes", None)
    if boxes is not None:
        side = data.image(0).size[0]
        boxes = np.asarray(boxes)[indices] * (first.input_size / side)
    return attention_grid(views, maps, titles, boxes)
