"""How an embedding is learned: the CoIns losses, the MoCo machinery and the training loop.

The config is imported at once (it needs no torch, so `coins --help` stays fast); the training
loop, which imports torch, only when `train` or `TrainingDiverged` is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import METHODS, TrainConfig, load_config

if TYPE_CHECKING:
    from .loop import TrainingDiverged, train

__all__ = ["METHODS", "TrainConfig", "TrainingDiverged", "load_config", "train"]


def __getattr__(name: str) -> Any:  # PEP 562: the loop (and torch) on first use
    if name in ("train", "TrainingDiverged"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
