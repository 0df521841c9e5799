"""Learning rate per step: linear warm-up, then cosine decay or step decay (/10 at given epochs)."""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimisation step `step` (0-based)."""
    epoch = step / steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "step":
        return cfg.lr * 0.1 ** sum(epoch >= e for e in cfg.lr_steps)
    span = max(1e-8, cfg.epochs - cfg.warmup_epochs)
    progress = min(1.0, (epoch - cfg.warmup_epochs) / span)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
