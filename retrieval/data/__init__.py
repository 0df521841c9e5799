"""Data sets with coarse and fine labels, by name, and the transforms that feed them to a model.

Importing this package registers the built-in data sets: synthetic-patches, fashion-mnist,
cifar100, sop, folder and csv.
"""

from . import cifar100, csv_gallery, fashion_mnist, folder, sop, synthetic  # noqa: F401 (register)
from .base import DatasetError, Item, RetrievalDataset
from .images import load_image
from .registry import (
    build_dataset,
    dataset_names,
    dataset_options,
    dataset_splits,
    describe_dataset,
    register_dataset,
)
from .transforms import (
    Augment,
    Preprocess,
    TransformedDataset,
    TwoViews,
    eval_transform,
    train_transform,
)

__all__ = [
    "Augment",
    "DatasetError",
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
