"""A tiny training setup shared by the training tests: seconds per run on a CPU."""

from __future__ import annotations

from typing import Any

from coins.train import TrainConfig, load_config

TINY_DATA = {
    "num_train": 64,
    "num_test": 48,
    "num_coarse": 4,
    "num_fine": 8,
    "image_size": 16,
    "big_size": 7,
    "small_size": 4,
}
TINY_MODEL = {
    "backbone_kwargs": {"channels": [8, 16, 16, 32]},
    "head_hidden": 16,
    "head_dim": 8,
    "preprocess": {"input_size": 16},
}


def tiny_config(**overrides: Any) -> TrainConfig:
    options: dict[str, Any] = {
        "dataset": "synthetic-patches",
        "dataset_options": TINY_DATA,
        "model": TINY_MODEL,
        "epochs": 2,
        "batch_size": 16,
        "K": 64,
        "lr": 0.05,
        "warmup_epochs": 0,
        "num_workers": 0,
        "bn_splits": 2,
        "log_every": 1,
        "proxies": 8,
        "proxy_start_epoch": 1,
    }
    return load_config(**{**options, **overrides})
