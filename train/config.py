"""One typed config for a training run, saved resolved in the run directory and checkpoints."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# torch-free: `coins train --help` builds its flags from these in a fraction of a second
from ..retrieval.config_check import check_value, hint_at
from ..retrieval.configs import Augment, EmbedderConfig
from ..retrieval.data.split import check_test_fraction
from ..retrieval.presets import (
    PRETRAINED_PRESET,
    Preset,
    get_preset,
    model_preset,
    preset_for_data,
)
from ..retrieval.presets import preset_names as preset_names
from .methods import METHODS


@dataclass
class TrainConfig:
    """Every option of `coins train`. Defaults follow the released CoIns code where it speaks."""

    method: str = "coins"  # one of METHODS (train/methods.py)
    dataset: str = "synthetic-patches"  # data set name (coins data list)
    root: str | None = None  # data set location (default per data set)
    dataset_options: dict[str, Any] = field(default_factory=dict)  # the data set's options
    model: EmbedderConfig = field(default_factory=EmbedderConfig)
    augment: Augment = field(default_factory=Augment)
    # the key view, and with it the queue and the soft targets, keeps `augment` alone
    strong_query: bool = False  # MaskCon's strong query: AutoAugment on the query view only
    # optimisation
    epochs: int = 100  # passes over the training split
    batch_size: int = 64  # images per step in each process
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.03  # base learning rate (the released code: 0.03 at batch 256)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 penalty of the optimizer
    schedule: str = "cosine"  # cosine | step
    lr_steps: tuple[int, ...] = ()  # epochs where a step schedule divides lr by 10
    warmup_epochs: int = 0  # epochs of linear learning-rate warm-up
    # fine-tuning a pretrained backbone (model.pretrained)
    backbone_lr_mult: float = 1.0  # the backbone learns at lr times this (1: as the rest)
    freeze_bn: bool = False  # the backbone's BatchNorm keeps its statistics and affine weights
    head_warmup_epochs: int = 0  # first epochs train head and classifier only (backbone frozen)
    # the backbone's stem and first N stages keep their weights and BatchNorm statistics for the
    # whole run, and backward stops above them; a time budget chooses it for pretrained weights
    freeze_stages: int = 0
    # MoCo machinery
    K: int = 4096  # queue size; K % (batch_size * world_size) == 0
    m: float = 0.99  # key-encoder momentum
    T: float = 0.2  # temperature of L_ins and L_cos
    bn_splits: int = 2  # single-process shuffle-BN: the batch is forwarded in this many groups
    # losses
    alpha: float = 0.5  # weight of L_cos in coins / coins-imp / coinsp
    cos_warmup_epochs: int = 0  # epochs of L_cos alone before the instance loss joins
    # constant, or cosine: alpha falls to 0 by the last epoch once the instance loss has joined
    alpha_schedule: str = "constant"
    # shared: L_cos classifies q, the head L_ins trains (the paper); own: a second projection
    # head of the backbone feature feeds the classifier, so q answers to L_ins alone
    classifier_head: str = "shared"
    # fixed: the weights above; uncertainty: each term also times exp(-s) plus s, with s learned
    # per term (Kendall et al. 2018): at its optimum s = log(w * L), every term weighs as L / L,
    # so the balance of L_cos and the loss over keys adapts and alpha only sets where it starts
    loss_weighting: str = "fixed"
    peer_w: float = 0.5  # grafit / maskcon mixing weight w
    maskcon_T0: float = 0.1  # maskcon: temperature of the contrastive logits
    maskcon_T: float = 0.05  # maskcon: temperature of the soft target
    # instance proxy loss (coinsp)
    proxies: int = 0  # P; 0 means about N / 5
    proxy_start_epoch: int = 0  # M; 0 means half the epochs
    lambda_p: float = 1.0  # weight of L_proxy
    T_p: float = 0.2  # temperature of L_proxy
    proxy_per_coarse: bool = True  # k-means inside each coarse class (P split by class size)
    imp_proxy: bool = True  # coinsp builds on coins-imp (True) or coins (False)
    bank_momentum: float = 0.5  # memory-bank update: v <- normalize(b * v + (1 - b) * k)
    # run
    seed: int = 0  # seeds model init, data order and augmentation
    device: str = "cpu"  # cpu or cuda (with --nproc: one GPU per process)
    amp: bool = True  # mixed precision on CUDA only
    num_workers: int = 2  # data-loader processes; -1: one per core of this process, less one
    cache_images_mb: int = 1024  # file galleries: decoded into memory once if they fit (0: never)
    eval_every: int = 0  # epochs between test evaluations; 0: only at the end
    eval_untrained: bool = True  # evaluate the starting embedder too, as epoch 0
    eval_split: str = "test"  # split of the final evaluation; val: the held-out split only
    # Held out of the training split per coarse class, seeded by `seed` (retrieval/data/
    # holdout.py); with it, every evaluation during training is on `val` and the eval split is
    # evaluated once at the end, so no choice made on the evaluations sees the test split.
    val_fraction: float = 0.0  # fraction of training images held out as the val split
    # a gallery without splits of its own (retrieval/data/split.py): seeded by `seed`
    test_fraction: float = 0.0  # share of each class made the test split, in (0, 1); 0: none
    split_by: str = "item"  # item: every product on both sides; fine: whole products to test
    time_budget_min: float = 0.0  # minutes the run may take here: input size and epochs fit it
    select_by: str = "auto"  # selection score: auto (fine R@1 if val has fine labels) | view | fine
    eval_which: str = "backbone"  # backbone | head
    log_every: int = 50  # steps between JSON-lines log records
    checkpoint_every: int = 1  # epochs between checkpoints
    max_steps: int = 0  # stop after this many steps (0: no limit); for tests and smoke runs

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer {self.optimizer!r}: expected sgd or adamw")
        if self.alpha_schedule not in ("constant", "cosine"):
            raise ValueError(f"alpha_schedule {self.alpha_schedule!r}: expected constant or cosine")
        if self.classifier_head not in ("shared", "own"):
            raise ValueError(f"classifier_head {self.classifier_head!r}: expected shared or own")
        if self.loss_weighting not in ("fixed", "uncertainty"):
            raise ValueError(
                f"loss_weighting {self.loss_weighting!r}: expected fixed or uncertainty"
            )
        if self.loss_weighting == "uncertainty" and len(METHODS[self.method].loss_terms) < 2:
            raise ValueError(
                f"loss_weighting uncertainty balances two or more loss terms; {self.method} "
                f"trains {', '.join(METHODS[self.method].loss_terms)} alone"
            )
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule {self.schedule!r}: expected cosine or step")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")
        if self.eval_which not in ("backbone", "head"):
            raise ValueError(f"eval_which {self.eval_which!r}: expected backbone or head")
        check_test_fraction(self.test_fraction, self.split_by)
        if self.time_budget_min < 0:
            raise ValueError(f"time_budget_min must be >= 0 (0: none), got {self.time_budget_min}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.eval_split == "val" and self.val_fraction == 0:
            raise ValueError("eval_split val needs a val_fraction above 0 (the held-out share)")
        if self.num_workers < -1:
            raise ValueError(f"num_workers must be >= 0 (or -1: per core), got {self.num_workers}")
        if self.select_by not in ("auto", "view", "fine"):
            raise ValueError(f"select_by {self.select_by!r}: expected auto, view or fine")
        if self.backbone_lr_mult < 0:
            raise ValueError(f"backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if self.freeze_stages < 0:
            raise ValueError(
                f"freeze_stages must be >= 0 (0: none; N: the stem and stages 1..N), got "
                f"{self.freeze_stages}"
            )
        if not 0 <= self.head_warmup_epochs < max(self.epochs, 1):
            raise ValueError(
                f"head_warmup_epochs must be in [0, epochs={self.epochs}), got "
                f"{self.head_warmup_epochs}: the backbone would never train; lower it "
                "(--head-warmup-epochs 0) or raise --epochs"
            )

    @property
    def uses_queue(self) -> bool:
        """Whether the method has a key encoder and queue (and so trains on two views)."""
        return METHODS[self.method].key_encoder

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_value("", cls, d, what=OPTIONS)
        d = dict(d)
        model = d.pop("model", None)
        augment = d.pop("augment", None)
        if "lr_steps" in d:
            d["lr_steps"] = tuple(d["lr_steps"])
        cfg = cls(**d)
        if isinstance(model, dict):
            cfg.model = EmbedderConfig.from_dict(model)
        elif model is None:
            cfg.model = model_preset(cfg.dataset)
        else:
            cfg.model = model
        cfg.augment = (
            Augment.from_dict(augment) if isinstance(augment, dict) else augment or Augment()
        )
        return cfg


OPTIONS = "training options"  # how errors name the keys of TrainConfig


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    fit: bool = True,
    budget: bool = False,
    **overrides: Any,
) -> TrainConfig:
    """A config from a preset, then a YAML file, then explicit overrides (later wins).

    The preset is `preset` (else the file's `preset:` key), else the data set's own, else, for a
    data set without one (csv, folder), the image kind closest to its first image (printed).
    Every value is checked against its field's declared type before anything is built.
    Overrides may be dotted (`**{"model.head_dim": 64}`, as `--set` gives them), applied in
    order; None means not given. A mapping merges key by key into the one it overrides
    (`model={"head_dim": 64}` keeps the preset's backbone), except `{}`, which replaces it:
    `model.backbone_kwargs={}` drops the preset's timm arguments (for another backbone).
    `fit`: size batch, K and epochs to the training split; `budget`: also fit input size and
    epochs to `time_budget_min` minutes, timed here (`coins train` does; train/budget.py).
    Neither changes an option the file or the overrides set.
    """
    raw = _read_options(path) if path is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    in_file = raw.pop("preset", None)  # a YAML file may name its preset; `preset` wins
    named = preset or in_file
    sketch = raw  # file and overrides, unchecked: enough to find the data set's preset
    for key, value in given.items():
        sketch = _merge(sketch, _nested(key, value))
    if named is None and _lookup(sketch, "model.pretrained"):
        named = PRETRAINED_PRESET
        about = get_preset(named).about
        print(f"coins: pretrained weights given: preset {named} ({about}); choose another with "
              "--preset NAME", file=sys.stderr)  # fmt: skip
    unnamed = "dataset" not in sketch and (named is None or not get_preset(named).dataset)
    options = _preset_options(named, sketch)
    check_value("", TrainConfig, raw, options, OPTIONS)
    options = _merge(options, raw)
    for key, value in given.items():
        check_value(key, hint_at(TrainConfig, key, OPTIONS), value, _lookup(options, key), OPTIONS)
        options = _merge(options, _nested(key, value))
    if _lookup(options, "model.pretrained"):
        from ..retrieval.pretrained import with_weights_config  # imports timm: not for --help

        options["model"] = with_weights_config(options["model"], sketch.get("model") or {})
    if unnamed:  # once the options are known to be valid: an error is the first thing said
        from ..retrieval.data import dataset_names

        print(f"coins: no data set given (--dataset): training on {TrainConfig.dataset}, the "
              f"built-in generated one; yours: --dataset folder --root DIR, or one of "
              f"{', '.join(dataset_names())}", file=sys.stderr)  # fmt: skip
    if fit:
        from .budget import dotted_keys, fit_options

        options = fit_options(options, dotted_keys(sketch), budget)
    return TrainConfig.from_dict(options)


def _read_options(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")
    loaded = yaml.safe_load(file.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {file}: expected a YAML mapping of options")
    return loaded


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; mappings merge key by key, but an empty one replaces (clears)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _nested(key: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for key "a.b"."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _lookup(options: dict[str, Any], key: str) -> Any:
    """The value at dotted `key`, or None."""
    node: Any = options
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@dataclass(frozen=True)
class FieldDoc:
    """One training option as `coins train --help` explains it."""

    key: str  # dotted below a nested config: model.preprocess.input_size
    hint: Any  # the declared type
    default: Any  # the dataclass default (a preset may set another)
    comment: str  # the comment on the field's line in the source


def field_docs(cls: type = TrainConfig, prefix: str = "") -> list[FieldDoc]:
    """Every option of dataclass `cls`, nested configs expanded to dotted keys, each with the
    comment written on its line (the source is the one place the options are explained)."""
    hints, comments = typing.get_type_hints(cls), _field_comments(cls)
    docs = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            docs += field_docs(hint, f"{prefix}{f.name}.")
            continue
        factory: Any = f.default_factory  # MISSING unless the field has a factory
        default = factory() if f.default is dataclasses.MISSING else f.default
        docs.append(FieldDoc(prefix + f.name, hint, default, comments.get(f.name, "")))
    return docs


def _field_comments(cls: type) -> dict[str, str]:
    """{field: the comment ending its line, else the comment lines just above it} of a class
    body; comments are not in the AST, so tokenize finds them by line and ast says which field
    each line declares."""
    source = textwrap.dedent(inspect.getsource(cls))
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    by_line = {
        t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    comments = {}
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment = by_line.get(node.end_lineno or node.lineno, "")
            above = node.lineno - 1  # else the comment lines just above the field
            while not comment and above >= 1 and lines[above - 1].lstrip().startswith("#"):
                above -= 1
            if not comment:
                comment = " ".join(by_line[n] for n in range(above + 1, node.lineno))
            comments[node.target.id] = comment
    return comments


def preset(name: str) -> dict[str, Any]:
    """The options preset `name` starts a run from (see `preset_names()`); retrieval/presets.py
    holds the table ([design]: sized for a 2-core CPU; scale up on a GPU)."""
    return _options(get_preset(name))


def _preset_options(name: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    if name is not None:
        return preset(name)
    dataset = raw.get("dataset", TrainConfig.dataset)
    chosen, _ = preset_for_data(dataset, raw.get("root"), raw.get("dataset_options"))
    return _options(chosen)


def _options(p: Preset) -> dict[str, Any]:
    base = {"dataset": p.dataset} if p.dataset else {}
    return _merge({**base, "model": p.model.to_dict()}, dict(p.train))
