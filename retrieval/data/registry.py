"""Data sets by name, so configs and the CLI say `fashion-mnist` instead of importing a class.

A builder is a RetrievalDataset subclass whose constructor takes `split`, `root` and keyword
options; the options a builder accepts are read from its signature, so a misspelt option fails
loudly instead of being ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .base import DatasetError, RetrievalDataset

Builder = TypeVar("Builder", bound=type[RetrievalDataset])

_BUILDERS: dict[str, type[RetrievalDataset]] = {}
_FIXED_PARAMETERS = ("self", "split", "root")


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Class decorator: make the data set buildable as `name` (and set its `name`)."""

    def register(builder: Builder) -> Builder:
        known = _BUILDERS.get(name)
        if known is not None and known.__qualname__ != builder.__qualname__:
            raise DatasetError(f"data set name {name!r} already taken by {known.__qualname__}")
        builder.name = name
        _BUILDERS[name] = builder
        return builder

    return register


def dataset_names() -> list[str]:
    """Registered names, sorted."""
    return sorted(_BUILDERS)


def dataset_splits(name: str, root: str | Path | None = None) -> tuple[str, ...]:
    """Splits of `name`; for file layouts that decide their own splits, pass `root` to read them."""
    return _builder(name).available_splits(None if root is None else Path(root))


def dataset_options(name: str) -> dict[str, Any]:
    """The keyword options of `name` with their defaults (inspect.Parameter.empty if required)."""
    signature = inspect.signature(_builder(name))
    return {
        key: param.default
        for key, param in signature.parameters.items()
        if key not in _FIXED_PARAMETERS and param.kind is not inspect.Parameter.VAR_KEYWORD
    }


def build_dataset(
    name: str, split: str = "train", root: str | Path | None = None, **options: Any
) -> RetrievalDataset:
    """Build data set `name`; unknown names, splits and options raise DatasetError."""
    builder = _builder(name)
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DatasetError(
            f"unknown option(s) {unknown} for data set {name!r}; expected some of {sorted(valid)}"
        )
    make: Callable[..., RetrievalDataset] = builder
    return make(split=split, root=None if root is None else Path(root), **options)


def _builder(name: str) -> type[RetrievalDataset]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise DatasetError(
            f"unknown data set {name!r}; expected one of {dataset_names()}"
        ) from None


def describe_dataset(
    name: str, root: str | Path | None = None, **options: Any
) -> list[dict[str, object]]:
    """The summary of every split of `name` (counts of images, coarse and fine classes)."""
    return [build_dataset(name, s, root, **options).summary() for s in dataset_splits(name, root)]
