"""Sizing a run to its gallery and to a time budget, before anything is trained.

Two steps, each printed with its reason (stderr), each leaving alone what the user set:

1. `size_for_gallery` (retrieval/presets.py): batch, queue K and epochs follow the number of
   training images (a preset is written for thousands of images; a gallery of a hundred would
   get one step per epoch and a queue longer than itself).
2. With `time_budget_min` > 0 (`coins train`, `load_config(budget=True)`), a few training
   steps and evaluation batches are timed on this machine, at the model's input size, and the
   run is fitted into the budget. From pretrained weights (`model.pretrained`), while fewer
   than `MIN_FIT_EPOCHS` training epochs would fit, the backbone's stem and first stages are
   frozen first (`freeze_stages` 1, then 2: `FREEZE_MOST`; the last stage always trains),
   each level timed here, at the weights' own input size: their early stages are generic
   features, and a frozen stage costs no backward pass. Then the input size steps down
   (224, 192, 160, 128, 112) with the most frozen, and the epochs are as many as fit (at most
   the recipe's). A run from scratch never freezes (random early stages are no features to
   keep), nor does one whose `freeze_stages` the user set. The budget is the whole
   run's, counted from the process's start; the estimate counts the training steps, their
   augmentation, decoding the gallery once and the evaluations (the untrained one, the final
   one with its selection score, and any `eval_every`), and plans 90 % of what is left.

While it trains, the loop keeps the budget too (`run_deadline`): the machine may slow down
after the timing (other jobs start), so training stops early, at a step's end, when the time
left is what the final evaluation needs.

A resumed run keeps what was fitted when it started (`fitted_from_run`): a new timing would
give other epochs, and a run must not change under `--resume`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..retrieval.data.split import build_split
from ..retrieval.presets import MIN_TRAIN_IMAGES, size_for_gallery

SIZES = (224, 192, 160, 128, 112)  # input sizes the budget may step down to, largest first
MIN_FIT_EPOCHS = 3  # training epochs below which a smaller input size is tried
EVAL_PASSES = 5  # forward passes over the eval split: untrained, final, two selection views, test
MARGIN = 0.9  # the share of the budget planned: start-up, checkpoints and a busy machine
FREEZE_MOST = 2  # [design] stages (and the stem) a budget freezes at most, of pretrained weights
FITTED_KEYS = (
    "epochs",
    "batch_size",
    "K",
    "max_steps",
    "freeze_stages",
    "model.preprocess.input_size",
)


def say(line: str) -> None:
    print(f"coins: {line}", file=sys.stderr, flush=True)


def fit_options(options: dict[str, Any], fixed: set[str], budget: bool = True) -> dict[str, Any]:
    """`options` (resolved training options) sized to the training split and, if `budget`
    and `time_budget_min` > 0, to the time budget; `fixed`: the dotted keys the user set."""
    try:
        train = _train_split(options)
    except (OSError, ValueError):  # the run itself reports a missing data set, a bad split
        return options
    if len(train) < MIN_TRAIN_IMAGES:  # the run refuses it, naming the fix (check_trainable)
        return options
    sized, why = size_for_gallery(options, len(train), fixed)
    if why:
        say(f"{len(train)} training images: " + "; ".join(why))
    if budget and float(sized.get("time_budget_min", 0) or 0) > 0:
        sized = fit_to_budget(sized, train, fixed)
    return sized


def _train_split(options: dict[str, Any]) -> Any:
    return build_split(
        options.get("dataset", "synthetic-patches"),
        "train",
        options.get("root"),
        options.get("dataset_options") or {},
        float(options.get("test_fraction", 0.0) or 0.0),
        options.get("split_by", "item"),
        int(options.get("seed", 0)),
    )


def fit_to_budget(options: dict[str, Any], train: Any, fixed: set[str]) -> dict[str, Any]:
    """The input size, frozen stages and epochs that fit `time_budget_min` minutes here."""
    from ..retrieval.data.images import FileDataset

    start = time.perf_counter()
    budget_s = float(options["time_budget_min"]) * 60 * MARGIN - _since_process_start()
    n = len(train)
    n_eval = _eval_images(options, n)
    size = int(options["model"]["preprocess"]["input_size"])
    timing = _time_steps(options, train, size)
    sizes = [size]
    yours = bool(fixed & {"model.preprocess.input_size", "model.preprocess"})
    if not yours:
        sizes += [s for s in SIZES if s < size]
    levels, no_freeze = _freeze_levels(options, fixed)
    files = train.base if hasattr(train, "base") else train
    decode_s = timing["decode_s"] * (n + n_eval) if isinstance(files, FileDataset) else 0.0
    warm = int(options.get("head_warmup_epochs", 0) or 0)
    # the weights' input size with more stages frozen first (pretrained early stages are
    # generic), then smaller inputs with the most frozen
    tried = [(size, k) for k in levels] + [(s, levels[-1]) for s in sizes[1:]]
    timed = {levels[0]: timing}
    for chosen, frozen in tried:
        if frozen not in timed:  # timed only when needed: each costs a few steps
            options_k = {**options, "freeze_stages": frozen}
            step_k = _time_steps(options_k, train, size, steps_only=True)["step_s"]
            # freezing changes the steps only: decoding, augmenting, evaluating stay as timed
            rate = _images_per_s(int(options["batch_size"]), step_k, timing["augment_s"])
            timed[frozen] = {**timing, "step_s": step_k, "images_per_s": rate}
        left = budget_s - (time.perf_counter() - start) - decode_s
        step_s = timed[frozen]["step_s"]
        epochs, epoch_s, eval_s = _plan(options, n, n_eval, step_s, timing, chosen / size, left)
        if epochs >= MIN_FIT_EPOCHS + warm:
            break
    out = json.loads(json.dumps(options))  # a deep copy of plain data
    out["model"]["preprocess"]["input_size"] = chosen
    out["freeze_stages"] = frozen
    most = int(options.get("epochs", 100))
    dropped = ""
    if warm and epochs < warm + 2 and not fixed & {"head_warmup_epochs", "epochs"}:
        # the head-only epochs would leave the backbone under two epochs, or none: the
        # backbone's lower learning rate (backbone_lr_mult) protects it from the new head
        dropped = (
            f"; the head-only warm-up dropped: {warm} of the {max(epochs, 1)} epochs that fit "
            "would leave the backbone fewer than 2"
        )
        out["head_warmup_epochs"] = warm = 0
    least = 1 + warm  # the backbone trains in one epoch at least
    fitted = min(most, max(epochs, least))
    if "epochs" not in fixed:
        out["epochs"] = fitted
    steps = n // int(options["batch_size"])
    step_s = max(epoch_s / max(steps, 1), 1e-9)
    cut = ""
    if epochs < least and "epochs" not in fixed and not options.get("max_steps"):
        # not even the shortest run fits: it stops after the steps that do (max_steps), so
        # the run ends in time, with the learning-rate schedule laid over the full epochs
        left = budget_s - (time.perf_counter() - start) - decode_s - eval_s
        out["max_steps"] = max(int(left // step_s), 1)
        fitted_s = out["max_steps"] * step_s
        cut = f", cut to {out['max_steps']} of their {fitted * steps} steps (max_steps)"
    else:
        fitted_s = out["epochs"] * epoch_s
    planned = (fitted_s + eval_s + decode_s) / 60
    down = f" (down from {size} px: {MIN_FIT_EPOCHS} epochs at least)" if chosen < size else ""
    say(
        f"time budget {options['time_budget_min']:g} min on this machine (timed here: "
        f"{timing['images_per_s']:.1f} training images/s at {size} px): input {chosen} px"
        f"{' (yours)' if yours else ''}{down}, "
        + _frozen_words(levels, timed, frozen, no_freeze)
        + f"{out['epochs']} epoch{'s' * (out['epochs'] != 1)} of {n} images{cut} "
        f"({epoch_s:.0f} s an epoch), evaluations {eval_s:.0f} s, decoding {decode_s:.0f} s: "
        f"about {planned:.1f} min planned"
        + (f" (the recipe's {most} epochs fit)" if fitted == most else "")
        + dropped
    )
    if cut:
        say(
            f"warning: not even {least} epoch{'s' * (least > 1)} fit{'s' * (least == 1)} the "
            "budget at the smallest input size on this machine now; the run stops early. "
            "Raise --time-budget-min (0: no budget), or train on a faster machine"
        )
    return out


def _plan(
    options: dict[str, Any],
    n: int,
    n_eval: int,
    step_s: float,
    timing: dict[str, float],
    ratio: float,
    left: float,
) -> tuple[int, float, float]:
    """(epochs that fit in `left` s, seconds an epoch, seconds of the evaluations) at an input
    `ratio` times the timed one's side, with a step of `step_s` s at the timed size."""
    scale = ratio**2  # a convolution's cost follows the pixels
    steps = n // int(options["batch_size"])
    # loader workers augment beside the steps, sharing the cores: half their time counted
    overlap = 2 if int(options.get("num_workers", 0) or 0) else 1
    epoch_s = steps * step_s * scale + n * timing["augment_s"] * scale / overlap
    evals = EVAL_PASSES + _extra_evals(options)
    eval_s = evals * n_eval * timing["forward_s"] * scale
    return max(int((left - eval_s) // epoch_s), 0), epoch_s, eval_s


def _freeze_levels(options: dict[str, Any], fixed: set[str]) -> tuple[list[int], str]:
    """The `freeze_stages` a budget may try, fewest first, and why it may try no other: yours,
    a run from scratch (random early stages are no features to keep), or a backbone whose
    stages timm does not name."""
    own = int(options.get("freeze_stages", 0) or 0)
    if "freeze_stages" in fixed:
        return [own], "yours"
    if not options["model"].get("pretrained"):
        return [own], "from scratch"
    from ..retrieval.configs import EmbedderConfig
    from ..retrieval.models import create_backbone
    from .stages import stage_count

    plain = {**options["model"], "pretrained": None, "weights": None}  # the architecture
    try:
        stages = stage_count(create_backbone(EmbedderConfig.from_dict(plain)))
    except ValueError as e:
        return [own], str(e)
    most = min(FREEZE_MOST, stages - 1)  # the last stage trains
    if most <= own:
        return [own], f"{stages} stage{'s' * (stages != 1)}: the last one trains"
    return list(range(own, most + 1)), ""


def _frozen_words(
    levels: list[int],
    timed: dict[int, dict[str, float]],
    frozen: int,
    no_freeze: str,
) -> str:
    """The frozen stages chosen, and why; nothing for a run from scratch left as it was."""
    from .stages import describe

    if no_freeze == "from scratch":
        return f"{describe(frozen)}, " if frozen else ""
    if no_freeze:
        return f"{describe(frozen)} ({no_freeze}), "
    first = levels[0]
    if frozen == first:
        return f"{describe(frozen)} ({MIN_FIT_EPOCHS} epochs fit {'so' if first else 'unfrozen'}), "
    against = "unfrozen" if first == 0 else f"with {describe(first)}"
    rate, base = timed[frozen]["images_per_s"], timed[first]["images_per_s"]
    return (
        f"{describe(frozen)} (timed: {rate:.1f} training images/s against {base:.1f} {against}), "
    )


def run_deadline(budget_min: float) -> float:
    """The wall-clock time (time.time()) by which a run of `budget_min` minutes, counted from
    this process's start, must have ended."""
    return time.time() - _since_process_start() + budget_min * 60


def _since_process_start() -> float:
    """Seconds this process has run (the imports, the data set's listing): the budget is the
    whole run's. 0 where /proc does not say."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def _eval_images(options: dict[str, Any], n_train: int) -> int:
    """Images of the split evaluated during training (test, or a val share of train)."""
    val = float(options.get("val_fraction", 0) or 0)
    if val > 0:
        return round(val * n_train)
    test_fraction = float(options.get("test_fraction", 0) or 0)
    if test_fraction > 0:
        return round(n_train * test_fraction / (1 - test_fraction))
    try:
        return len(
            build_split(
                options.get("dataset", "synthetic-patches"),
                options.get("eval_split", "test"),
                options.get("root"),
                options.get("dataset_options") or {},
            )
        )
    except (OSError, ValueError):
        return n_train // 4


def _extra_evals(options: dict[str, Any]) -> int:
    every = int(options.get("eval_every", 0) or 0)
    return 3 * (int(options.get("epochs", 1)) // every) if every else 0


def _time_steps(
    options: dict[str, Any], train: Any, size: int, steps_only: bool = False
) -> dict[str, float]:
    """Seconds per training step (forward and backward of a batch, with the options'
    `freeze_stages` frozen), per augmented image, per evaluated image and per decoded file,
    measured here at input `size`; `steps_only`: the step alone ({"step_s": ...})."""
    import numpy as np
    import torch

    from ..retrieval.data import eval_transform, train_transform
    from ..retrieval.data.images import FileDataset
    from .builder import CoInsModel
    from .config import TrainConfig

    plain = json.loads(json.dumps(options))
    plain["model"]["pretrained"] = None  # the timing needs the architecture, not the weights
    plain["model"]["weights"] = None
    plain["time_budget_min"] = 0.0
    cfg = TrainConfig.from_dict(plain)
    B = cfg.batch_size
    torch.manual_seed(0)
    model = CoInsModel(cfg, len(train.coarse_classes), np.asarray(train.coarse_labels))
    model.train()
    C = cfg.model.preprocess.in_chans
    x = torch.randn(B, C, size, size)
    labels = torch.as_tensor(np.asarray(train.coarse_labels)[:B] % len(train.coarse_classes))
    fine = torch.zeros(B, dtype=torch.int64)
    index = torch.arange(B)

    def step() -> None:
        loss, _ = model(
            x, x.clone() if cfg.uses_queue else None, labels, fine, index,
            torch.Generator().manual_seed(0), instance_on=True, cos_scale=1.0, proxy_on=False,
        )  # fmt: skip
        model.zero_grad(set_to_none=True)
        loss.backward()

    step()  # the first step allocates: not timed
    tic = time.perf_counter()
    step()
    step()
    step_s = (time.perf_counter() - tic) / 2
    if steps_only:
        return {"step_s": step_s}
    model.eval()
    with torch.no_grad():
        model.encoder_q.embed(x)  # allocates
        passes = []
        for _ in range(2):  # the faster of two: one pass is at the mercy of other jobs
            tic = time.perf_counter()
            model.encoder_q.embed(x)
            passes.append(time.perf_counter() - tic)
        forward_s = min(passes) / B
    files = train.base if hasattr(train, "base") else train
    tic = time.perf_counter()
    images = [train.image(i) for i in range(min(8, len(train)))]  # decoded from the files
    decode_s = (time.perf_counter() - tic) / len(images) if isinstance(files, FileDataset) else 0.0
    pre = dataclasses.replace(cfg.model.preprocess, input_size=size)
    augment = train_transform(pre, cfg.augment)
    tic = time.perf_counter()
    for img in images:
        augment(img)
        augment(img)  # two views
    augment_s = (time.perf_counter() - tic) / len(images)
    evaluate = eval_transform(pre)  # an evaluation decodes and resizes every image, each pass
    tic = time.perf_counter()
    for img in images:
        evaluate(img)
    forward_s += decode_s + (time.perf_counter() - tic) / len(images)
    return {
        "step_s": step_s,
        "forward_s": forward_s,
        "decode_s": decode_s,
        "augment_s": augment_s,
        "images_per_s": _images_per_s(B, step_s, augment_s),
    }


def _images_per_s(batch: int, step_s: float, augment_s: float) -> float:
    """Training images a second: a step of `batch`, and the augmentation of each image."""
    return batch / (step_s + batch * augment_s)


def fitted_from_run(out: str | Path) -> dict[str, Any]:
    """The fitted options (FITTED_KEYS, dotted) of the run in `out` (its config.json), to keep
    them on `--resume`; empty without one or when that run had no budget."""
    path = Path(out) / "config.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    if not float(saved.get("time_budget_min", 0) or 0):
        return {}
    found: dict[str, Any] = {}
    for key in FITTED_KEYS:
        node: Any = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found[key] = node
    return found


def dotted_keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    """Every key of nested `d` dotted, the mappings' own keys included (`model`,
    `model.preprocess`, `model.preprocess.input_size`)."""
    keys: set[str] = set()
    for key, value in d.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{key}.")
    return keys


__all__ = ["dotted_keys", "fit_options", "fit_to_budget", "fitted_from_run"]
