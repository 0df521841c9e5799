"""The training loop: epochs of steps, logs, evaluation, atomic checkpoints and exact resume.

Resume is exact at epoch boundaries: the data order, the augmentation RNG and the shuffle-BN
permutations are all seeded from (seed, epoch, step), and a checkpoint holds every tensor the
next epoch reads (both encoders, queue, classifier, bank, proxies, optimiser).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..retrieval.atomic import write_json
from ..retrieval.checkpoint import load_checkpoint, save_checkpoint
from ..retrieval.data import (
    RetrievalDataset,
    TransformedDataset,
    TwoViews,
    train_transform,
)
from ..retrieval.data.holdout import HeldOut, holdout
from ..retrieval.data.images import FileDataset
from ..retrieval.data.split import build_split
from ..retrieval.evaluate import Metrics, embed_dataset, metrics_from_embeddings
from ..retrieval.models import Which
from ..retrieval.presets import check_trainable
from ..retrieval.progress import Progress, duration
from . import distributed as dist
from .budget import run_deadline
from .builder import CoInsModel
from .config import TrainConfig
from .methods import METHODS
from .metrics_log import MetricsLog, read_log
from .schedule import alpha_scale, lr_at
from .selection import selection_score

LAST = "last.pt"  # checkpoint written every `checkpoint_every` epochs; --resume reads it
FINAL = "checkpoint.pt"  # the final model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def _loader(data: RetrievalDataset, cfg: TrainConfig, epoch: int) -> DataLoader:
    rank, size = dist.world()
    _prepare_files(data, cfg)
    key = query = train_transform(cfg.model.preprocess, cfg.augment)
    if cfg.strong_query:  # MaskCon's strong query view; the key keeps the plain augmentation
        query = train_transform(cfg.model.preprocess, replace(cfg.augment, autoaugment=True))
    transform = TwoViews(query, key) if cfg.uses_queue else query
    # The sampler also runs alone (one replica) so the data order depends on (seed, epoch) only.
    dataset = TransformedDataset(data, transform)
    sampler: DistributedSampler = DistributedSampler(
        dataset, size, rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=loader_workers(cfg.num_workers),
        drop_last=True,
        persistent_workers=False,
        pin_memory=torch.device(cfg.device).type == "cuda",  # faster, asynchronous copies
        generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
    )


def loader_workers(num_workers: int) -> int:
    """`num_workers`, with -1 sized to the cores: those this process may use, shared with the
    other training processes on this machine (torchrun's LOCAL_WORLD_SIZE), less one for the
    process itself (it runs the model)."""
    if num_workers >= 0:
        return num_workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(len(os.sched_getaffinity(0)) // local - 1, 0)


def _prepare_files(data: RetrievalDataset, cfg: TrainConfig) -> None:
    """A gallery of files decodes JPEG no larger than the model needs, and is decoded into memory
    once, before the first epoch's workers start, when it fits `cfg.cache_images_mb`; then every
    epoch reads pixels as an in-memory data set does. Data sets already in memory are untouched."""
    files = data
    while isinstance(files, HeldOut):  # a val share of a test-fraction split: two levels
        files = files.base
    if not isinstance(files, FileDataset):
        return
    files.min_side = cfg.model.preprocess.input_size
    if cfg.cache_images_mb > 0 and files.decoded is None:
        files.cache_images(cfg.cache_images_mb, cfg.device)


def _optimizer(cfg: TrainConfig, model: CoInsModel) -> torch.optim.Optimizer:
    """One parameter group, or, for a fine-tune (backbone_lr_mult, head warm-up), two: the query
    backbone's and the rest (head, classifier, proxies), each with its "lr_scale" of lr."""
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if cfg.backbone_lr_mult != 1 or cfg.head_warmup_epochs:
        backbone = {id(p) for p in model.encoder_q.backbone.parameters()}
        params = [
            {"params": [p for p in params if id(p) not in backbone], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in backbone], "lr_scale": cfg.backbone_lr_mult},
        ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _check_sizes(cfg: TrainConfig, data: RetrievalDataset) -> int:
    """Steps per epoch; a clear error for queue and batch sizes that cannot work."""
    check_trainable(len(data))
    _, size = dist.world()
    global_batch = cfg.batch_size * size
    if cfg.uses_queue and cfg.K % global_batch != 0:
        raise ValueError(
            f"queue size K={cfg.K} must be a multiple of the global batch {global_batch} "
            f"(batch_size {cfg.batch_size} x {size} processes)"
        )
    if cfg.batch_size % cfg.bn_splits != 0:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be a multiple of bn_splits {cfg.bn_splits}"
        )
    steps = len(data) // global_batch
    if steps == 0:
        raise ValueError(
            f"{len(data)} training images are fewer than one global batch of {global_batch}"
        )
    return steps


def _splits(cfg: TrainConfig) -> tuple[RetrievalDataset, RetrievalDataset | None]:
    """The images training sees, and the held-out val split (None when val_fraction is 0)."""
    full = _split_of(cfg, "train")
    if cfg.val_fraction == 0:
        return full, None
    return holdout(full, cfg.val_fraction, cfg.seed)


def _split_of(cfg: TrainConfig, split: str) -> RetrievalDataset:
    """Split `split`: the data set's own, or cut by `test_fraction` (retrieval/data/split.py)."""
    options = cfg.dataset_options
    return build_split(
        cfg.dataset, split, cfg.root, options, cfg.test_fraction, cfg.split_by, cfg.seed
    )


def _evaluate(
    model: CoInsModel, data: RetrievalDataset, cfg: TrainConfig, device: torch.device, select: bool
) -> dict[str, Any]:
    """{"split", "fine", "coarse"} of `data`, and "selection" (train/selection.py) if `select`."""
    which: Which = "head" if cfg.eval_which == "head" else "backbone"
    x = embed_dataset(model.encoder_q, data, which=which, device=device, progress=False)
    record: dict[str, Any] = {
        "split": data.split,
        **metrics_from_embeddings(x, data.coarse_labels, data.fine_labels),
    }
    if select:
        record["selection"] = selection_score(
            model.encoder_q, data, cfg.augment, x, cfg.select_by, which, device
        )
    return record


def _save(
    path: Path,
    model: CoInsModel,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    epoch: int,
    step: int,
    data: RetrievalDataset,
) -> None:
    classifier = None
    if model.classifier is not None:
        level = model.method.classifier  # export names its output by it
        names = data.fine_classes if level == "fine" else data.coarse_classes
        classifier = {
            "weight": model.classifier.weight.detach().cpu(),
            "T": cfg.T,
            "classes": names,
            "level": level,
        }
        if model.classifier_head is not None:
            head = model.classifier_head.state_dict()
            classifier["head"] = {k: v.detach().cpu() for k, v in head.items()}
    save_checkpoint(
        path,
        model.encoder_q,
        method=cfg.method,
        train_config=cfg.to_dict(),
        classifier=classifier,
        epoch=epoch,
        step=step,
        train_state={"model": model.state_dict(), "optimizer": opt.state_dict()},
    )


# Options that may change when a run resumes: where and how fast it runs, how often it logs,
# and when it stops. Everything else (data, model, losses, optimiser, lr, epochs: the schedule
# is laid out over `epochs`) defines the run; a forgotten flag must not silently change it.
RESUME_MAY_DIFFER = frozenset(
    {
        "device",  # move the run to another machine or GPU
        "root",  # the same data set can live elsewhere there (dataset and options still match)
        "num_workers",  # loader processes for that machine's cores
        "cache_images_mb",  # that machine's memory
        "max_steps",  # a stop condition for smoke runs, not part of the run
        "log_every",  # the three cadences: bookkeeping only
        "eval_every",
        "checkpoint_every",
    }
)
RESUME_KEYS = ("train_config", "train_state.model", "train_state.optimizer", "epoch", "step")


def _resume_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint to resume from; a ValueError if `cfg` differs from the run it continues."""
    state = load_checkpoint(path, require=RESUME_KEYS)
    try:
        saved = TrainConfig.from_dict(state["train_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: its train_config does not load ({e})") from e
    given, before = _flat(cfg.to_dict()), _flat(saved.to_dict())
    differ = [
        f"  {key}: saved {_show(before, key)}, given {_show(given, key)}"
        for key in sorted(given.keys() | before.keys())
        if key.split(".")[0] not in RESUME_MAY_DIFFER
        and given.get(key, _UNSET) != before.get(key, _UNSET)
    ]
    if differ:
        raise ValueError(
            f"--resume: these options differ from the run in {path.parent}:\n"
            + "\n".join(differ)
            + f"\npass the run's own options (see {path.parent / 'config.json'}) "
            "or start a new run with another --out"
        )
    return state


_UNSET = object()


def _show(flat: dict[str, Any], key: str) -> str:
    value = flat.get(key, _UNSET)
    return "(unset)" if value is _UNSET else repr(value)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; tuples as lists, as a JSON round trip would have them."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))  # an empty one adds nothing: same as unset
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


OnEval = Callable[[dict[str, Any]], None]


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_eval: OnEval | None = None,
) -> Metrics:
    """Train `cfg.method` and return the final metrics of the eval split (also in OUT/eval.json,
    with the selection score and, when a val split is held out, its metrics under "val").

    `on_eval` receives each evaluation record (a metrics.jsonl "eval" line: epoch, split,
    metrics, selection) on the main process; an exception it raises stops the run (`coins
    tune` prunes trials this way).
    """
    distributed = dist.setup(cfg.device)
    try:
        return _train(cfg, Path(out), resume, progress and dist.is_main(), distributed, on_eval)
    finally:
        dist.teardown()


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    progress: bool,
    distributed: bool,
    on_eval: OnEval | None = None,
) -> Metrics:
    rank, _ = dist.world()
    if not resume and (out / LAST).exists():
        raise FileExistsError(
            f"{out} already holds a run ({LAST}); pass --resume to continue it, or another --out"
        )
    state = _resume_state(out / LAST, cfg) if resume else None  # before any work: fail fast
    device = torch.device(cfg.device)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed)  # model init: the same on every rank
    train_set, val_set = _splits(cfg)  # held-out items never train
    steps_per_epoch = _check_sizes(cfg, train_set)
    test_set = None
    if cfg.eval_split != "val":
        test_set = _split_of(cfg, cfg.eval_split)
    watched = val_set if val_set is not None else test_set  # the evaluations during training
    assert watched is not None, "eval_split val without val_fraction (TrainConfig checks)"
    method = METHODS[cfg.method]
    if "fine" in method.labels and train_set.fine_labels is None:
        raise ValueError(f"method {method.name} needs fine labels; {cfg.dataset} has none")
    fine = method.classifier == "fine"
    num_classes = len(train_set.fine_classes or []) if fine else len(train_set.coarse_classes)
    model = CoInsModel(cfg, num_classes, train_set.coarse_labels).to(device)
    net: torch.nn.Module = DistributedDataParallel(model) if distributed else model
    opt = _optimizer(cfg, model)
    start, step = 0, 0
    if state is not None:
        model.load_state_dict(state["train_state"]["model"])
        opt.load_state_dict(state["train_state"]["optimizer"])
        start, step = state["epoch"] + 1, state["step"]
    # On resume config.json already records this run (the flags were checked against it above);
    # written again only if it went missing.
    if dist.is_main() and (state is None or not (out / "config.json").exists()):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
    log = MetricsLog(out / "metrics.jsonl", enabled=dist.is_main())
    final_set = test_set if test_set is not None else watched  # the split eval.json reports
    _, size = dist.world()
    report = Progress(
        "coins train", (cfg.epochs - start) * steps_per_epoch * cfg.batch_size * size,
        enabled=progress,
    )  # fmt: skip
    report.note(
        f"{len(train_set):,} training images, {cfg.epochs - start} epoch"
        f"{'s' * (cfg.epochs - start != 1)} of {steps_per_epoch} "
        f"steps (batch {cfg.batch_size * size}); evaluating on {watched.split} "
        f"({len(watched):,} images)"
    )
    untrained = None
    tic = time.perf_counter()
    if cfg.eval_untrained and dist.is_main():
        untrained = _untrained(model, final_set, cfg, device, log, out, state is not None)
        if untrained is not None:
            report.note(f"untrained, on {untrained['split']}: {_recalls(untrained)}")
    # a time budget is kept while training too: the machine may slow down after the timing.
    # The final evaluation (one pass and the selection score's two) costs about three of the
    # untrained one. One process only: ranks deciding by their own clocks could part ways.
    stop_at = None
    if cfg.time_budget_min > 0 and not distributed:
        stop_at = run_deadline(cfg.time_budget_min) - 3 * (time.perf_counter() - tic) - 15
    M = cfg.proxy_start_epoch or cfg.epochs // 2
    record: dict[str, Any] = {}
    epoch = max(start - 1, 0)  # a finished run resumed: nothing left to train
    for epoch in range(start, cfg.epochs):
        if model.proxies is not None and epoch >= M:
            model.proxies.recluster(cfg.seed + epoch)
            dist.broadcast_(model.proxies.proxies)
            dist.broadcast_(model.proxies.pseudo)
        torch.manual_seed(cfg.seed * 100_003 + epoch * 101 + rank)  # augmentation in this process
        step = _epoch(
            net,
            model,
            opt,
            cfg,
            train_set,
            epoch,
            step,
            steps_per_epoch,
            log,
            device,
            report,
            proxy_on=model.proxies is not None and epoch >= M,
            stop_at=stop_at,
        )
        stopped = stop_at is not None and time.time() >= stop_at and epoch + 1 < cfg.epochs
        if stopped:
            report.note(
                f"time budget of {cfg.time_budget_min:g} min: training stops at step {step} "
                f"(epoch {epoch + 1} of {cfg.epochs}) to leave the final evaluation its time"
            )
        last = epoch + 1 == cfg.epochs or (cfg.max_steps and step >= cfg.max_steps) or stopped
        if dist.is_main() and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
            _save(out / LAST, model, opt, cfg, epoch, step, train_set)
        if dist.is_main() and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            record = _evaluate(model, watched, cfg, device, select=True)
            record = {"epoch": epoch + 1, "step": step, **record}
            log.write({"event": "eval", **record})
            report.note(f"epoch {epoch + 1}, on {record['split']}: {_recalls(record)}")
            if on_eval is not None:
                on_eval(record)
        if last:
            break
    report.close()
    metrics: Metrics = {}
    if dist.is_main():
        _save(out / FINAL, model, opt, cfg, epoch, step, train_set)
        result = {k: v for k, v in record.items() if k in ("fine", "coarse", "selection")}
        if record and val_set is not None and test_set is not None:
            # the test split, once, after every choice made on val
            test = _evaluate(model, test_set, cfg, device, False)
            log.write({"event": "test", "epoch": epoch + 1, "step": step, **test})
            val = {"fine": record["fine"], "coarse": record["coarse"]}
            result = {**result, "fine": test["fine"], "coarse": test["coarse"], "val": val}
        metrics = {"fine": result["fine"], "coarse": result["coarse"]} if result else {}
        if result and untrained is not None:  # the starting embedder, on the same split
            result["untrained"] = {k: untrained[k] for k in ("split", "fine", "coarse")}
        write_json(out / "eval.json", result)
    return metrics


def _recalls(record: dict[str, Any]) -> str:
    fine, coarse = record["fine"]["recall@1"], record["coarse"]["recall@1"]
    return f"fine R@1 {100 * fine:.1f}, coarse R@1 {100 * coarse:.1f}"


def _untrained(
    model: CoInsModel,
    data: RetrievalDataset,
    cfg: TrainConfig,
    device: torch.device,
    log: MetricsLog,
    out: Path,
    resumed: bool,
) -> dict[str, Any] | None:
    """The starting embedder's metrics: evaluated before the first step, an "eval" record of
    epoch 0 marked "untrained" (a resumed run reads back the one it logged)."""
    if resumed:
        logged = [r for r in read_log(log.path) if r.get("untrained")] if log.path.exists() else []
        return logged[-1] if logged else None
    record = {"epoch": 0, "step": 0, "untrained": True}
    record |= _evaluate(model, data, cfg, device, select=False)
    log.write({"event": "eval", **record})
    return record


def _epoch(
    net: torch.nn.Module,
    model: CoInsModel,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    data: RetrievalDataset,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    log: MetricsLog,
    device: torch.device,
    report: Progress,
    proxy_on: bool,
    stop_at: float | None = None,
) -> int:
    """One pass over the training data; returns the global step count after it."""
    _, size = dist.world()
    frozen = epoch < cfg.head_warmup_epochs  # head warm-up: only head and classifier learn
    model.freeze_backbone(frozen, set_grad=size == 1)
    net.train()
    amp = cfg.amp and device.type == "cuda"
    report.set_stage(f"epoch {epoch + 1}/{cfg.epochs}")
    tic, sums, count = time.perf_counter(), {"loss": 0.0}, 0
    for views, coarse, fine, _, index in _loader(data, cfg, epoch):
        lr = lr_at(cfg, step, steps_per_epoch)
        for i, group in enumerate(opt.param_groups):  # group 1: the backbone, if split
            group["lr"] = lr * (0.0 if frozen and i == 1 else group.get("lr_scale", 1.0))
        im_q, im_k = views if isinstance(views, list | tuple) else (views, None)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss, parts = net(
                im_q.to(device, non_blocking=True),
                None if im_k is None else im_k.to(device, non_blocking=True),
                coarse.to(device),
                fine.to(device),
                index.to(device),
                generator,
                instance_on=epoch >= cfg.cos_warmup_epochs,
                cos_scale=alpha_scale(cfg, epoch),
                proxy_on=proxy_on,
            )
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step} (parts {parts}); "
                f"stopped; the last good checkpoint is kept. Check the data, or start a new run "
                f"(another --out) with a lower --lr: --resume refuses changed flags."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step, count, value = step + 1, count + 1, loss.item()
        sums["loss"] += value
        for name, part in parts.items():
            sums[name] = sums.get(name, 0.0) + part
        rate = count * cfg.batch_size * size / (time.perf_counter() - tic)
        report.update(cfg.batch_size * size, loss=value)
        if cfg.log_every and step % cfg.log_every == 0:
            log.write(
                {
                    "event": "step",
                    "epoch": epoch + 1,
                    "step": step,
                    "lr": lr,
                    "loss": value,
                    **parts,
                    "images_per_s": rate,
                }
            )
        if cfg.max_steps and step >= cfg.max_steps:
            break
        if stop_at is not None and time.time() >= stop_at:  # the time budget (wall clock)
            break
    means = {name: value / max(count, 1) for name, value in sums.items()}
    log.write(
        {
            "event": "epoch",
            "epoch": epoch + 1,
            "step": step,
            **means,
            "images_per_s": count * cfg.batch_size * size / (time.perf_counter() - tic),
        }
    )
    seconds = time.perf_counter() - tic
    report.mark(f"epoch {epoch + 1} done in {duration(seconds)}, mean loss {means['loss']:.4f}")
    return step


__all__ = ["FINAL", "LAST", "TrainingDiverged", "train"]
