"""One typed config for a training run, saved resolved in the run directory and checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..retrieval.configs import check_fields
from ..retrieval.data.transforms import Augment
from ..retrieval.models import EmbedderConfig
from ..retrieval.presets import model_preset

METHODS = ("cos", "ins", "coins", "coins-imp", "coinsp", "opt", "grafit", "maskcon")


@dataclass
class TrainConfig:
    """Every option of `coins train`. Defaults follow the released CoIns code where it speaks."""

    method: str = "coins"  # one of METHODS
    dataset: str = "synthetic-patches"
    root: str | None = None  # data set location (default per data set)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: EmbedderConfig = field(default_factory=EmbedderConfig)
    augment: Augment = field(default_factory=Augment)
    # optimisation
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.03  # base learning rate (the released code: 0.03 at batch 256)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | step
    lr_steps: tuple[int, ...] = ()  # epochs where a step schedule divides lr by 10
    warmup_epochs: int = 0
    # MoCo machinery
    K: int = 4096  # queue size; K % (batch_size * world_size) == 0
    m: float = 0.99  # key-encoder momentum
    T: float = 0.2  # temperature of L_ins and L_cos
    bn_splits: int = 2  # single-process shuffle-BN: the batch is forwarded in this many groups
    # losses
    alpha: float = 0.5  # weight of L_cos in coins / coins-imp / coinsp
    cos_warmup_epochs: int = 0  # epochs of L_cos alone before the instance loss joins
    peer_w: float = 0.5  # grafit / maskcon mixing weight w
    maskcon_T0: float = 0.1
    maskcon_T: float = 0.05
    # instance proxy loss (coinsp)
    proxies: int = 0  # P; 0 means about N / 5
    proxy_start_epoch: int = 0  # M; 0 means half the epochs
    lambda_p: float = 1.0
    T_p: float = 0.2
    proxy_per_coarse: bool = True  # k-means inside each coarse class (P split by class size)
    imp_proxy: bool = True  # coinsp builds on coins-imp (True) or coins (False)
    bank_momentum: float = 0.5  # memory-bank update: v <- normalize(b * v + (1 - b) * k)
    # run
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # mixed precision on CUDA only
    num_workers: int = 2
    eval_every: int = 0  # epochs between test evaluations; 0: only at the end
    eval_split: str = "test"
    eval_which: str = "backbone"  # backbone | head
    log_every: int = 50  # steps between JSON-lines log records
    checkpoint_every: int = 1  # epochs between checkpoints
    max_steps: int = 0  # stop after this many steps (0: no limit); for tests and smoke runs

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer {self.optimizer!r}: expected sgd or adamw")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule {self.schedule!r}: expected cosine or step")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")
        if self.eval_which not in ("backbone", "head"):
            raise ValueError(f"eval_which {self.eval_which!r}: expected backbone or head")

    @property
    def uses_queue(self) -> bool:
        return self.method not in ("cos", "opt")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_fields(cls, d, "training options")
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
        if isinstance(augment, dict):
            fields: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()
            }
            augment = Augment(**fields)
        cfg.augment = augment or Augment()
        return cfg


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A config from the data set's preset, then a YAML file, then explicit overrides (later wins).

    Nested options (`model`, `augment`, `dataset_options`) merge key by key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"config file {file} does not exist")
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {file}: expected a YAML mapping of options")
        raw = loaded
    raw = _merge(raw, {k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(_merge(preset(raw.get("dataset", TrainConfig.dataset)), raw))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset(dataset: str) -> dict[str, Any]:
    """CPU-sized defaults per data set ([design]: sized for a 2-core CPU; scale up on a GPU)."""
    base = {"dataset": dataset, "model": model_preset(dataset).to_dict()}
    return _merge(base, PRESETS.get(dataset, {}))


PRESETS: dict[str, dict[str, Any]] = {
    "synthetic-patches": {
        # 120 epochs of a quarter-width ResNet-18 fit the 5-minute budget of a CPU run.
        "model": {"backbone_kwargs": {"channels": [16, 32, 64, 128]}},
        "epochs": 120,
        "batch_size": 64,
        "K": 256,  # below the 512 training images: a queue as long as the data set holds positives
        "num_workers": 0,  # in-memory images: loader workers only compete for the 2 cores
        "lr": 0.12,
        "warmup_epochs": 2,
        # L_cos at a quarter: 0.5 tied with `ins`, 0.25 beat it on 3 seeds and on a fresh data
        # draw (docs/results.md)
        "alpha": 0.25,
        "augment": {"crop_scale": [0.6, 1.0], "color_jitter": 0.0, "grayscale_p": 0.0},
    },
    "fashion-mnist": {
        "epochs": 4,
        "batch_size": 128,
        "K": 8192,
        "lr": 0.12,
        "warmup_epochs": 1,
        "augment": {"crop_scale": [0.5, 1.0], "color_jitter": 0.0, "grayscale_p": 0.0},
    },
    "cifar100": {
        "epochs": 200,
        "batch_size": 128,
        "K": 8192,
        "lr": 0.12,
        "weight_decay": 5e-4,
        "warmup_epochs": 5,
    },
}
