"""Data sets with coarse and fine labels, by name, and the transforms that feed them to a model.

Importing this package registers the built-in data sets: synthetic-patches, fashion-mnist,
cifar100, sop, folder and csv. It does not import torch: the torchvision transforms
(`eval_transform`, `train_transform`, ...) load on first access, so `coins serve`, which only
reads images, stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..configs import Augment, Preprocess
from . import cifar100, csv_gallery, fashion_mnist, folder, sop, synthetic  # noqa: F401 (register)
from .base import DatasetError, Item, RetrievalDataset
from .images import load_image
from .preprocess import EvalPreprocess
from .registry import (
    build_dataset,
    dataset_names,
    dataset_options,
    dataset_splits,
    describe_dataset,
    register_dataset,
)

if TYPE_CHECKING:
    from .transforms import TransformedDataset, TwoViews, eval_transform, train_transform

_TORCH_NAMES = {"TransformedDataset", "TwoViews", "eval_transform", "train_transform"}

__all__ = [
    "Augment",
    "DatasetError",
    "EvalPreprocess",
    "Item",
    "Preprocess",
    "RetrievalDataset",
    "TransformedDataset",
    "TwoViews",
    "build_dataset",
    "dataset_names",
    "dataset_options",
    "dataset_splits",
    "describe_dataset",
    "eval_transform",
    "load_image",
    "register_dataset",
    "train_transform",
]


def __getattr__(name: str) -> Any:
    """The torchvision names, importing torch on first use (PEP 562)."""
    if name in _TORCH_NAMES:
        value = getattr(importlib.import_module(".transforms", __name__), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
