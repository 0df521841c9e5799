"""Schedules: the learning rate per step (linear warm-up, then cosine decay or step decay, /10
at given epochs) and the weight of L_cos per epoch (constant, or cosine decay to 0)."""

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


def alpha_scale(cfg: TrainConfig, epoch: int) -> float:
    """The factor on alpha in epoch `epoch` (0-based): 1 while L_cos is alone (cos warm-up) and
    throughout with a constant schedule; with `cosine`, from 1 when the instance loss joins down
    to 0 at the end, so the coarse term shapes the early embedding and leaves the late one to
    the instance term."""
    if cfg.alpha_schedule == "constant" or epoch < cfg.cos_warmup_epochs:
        return 1.0
    span = max(1, cfg.epochs - cfg.cos_warmup_epochs)
    progress = (epoch - cfg.cos_warmup_epochs) / span
    return 0.5 * (1.0 + math.cos(math.pi * progress))
