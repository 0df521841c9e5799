"""What a retrieval data set is: images with a coarse label, maybe a fine one, and a stable id.

Training sees only the coarse labels; the fine labels are kept to judge whether the embedding
separated what the coarse labels lumped together (docs/method.md, "The problem").
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, SupportsIndex

import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """Bad data or a bad request for data; the message names the file and what was expected."""


@dataclass(frozen=True)
class Item:
    """One example: `fine` is None where the source gives no fine label."""

    image: Image.Image  # mode "RGB" or "L"
    coarse: int
    fine: int | None
    id: int  # stable across runs, so results can be traced back to the source


class RetrievalDataset(abc.ABC):
    """Labels held as arrays (cheap to evaluate with), images produced on access.

    Subclasses set the attributes below in `__init__` (then call `_check_labels`) and implement
    `image`. `name` is set by `register_dataset`.

    A map-style data set (`len`, integer indexing) that torch's DataLoader takes as it is. It is
    not a torch Dataset, so data sets load without torch: `coins serve` never imports it.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")  # the splits when not data-dependent

    split: str
    coarse_classes: list[str]
    fine_classes: list[str] | None  # None when the set has no fine labels
    coarse_labels: np.ndarray  # int64 [N]
    fine_labels: np.ndarray | None  # int64 [N], -1 where an item has no fine label
    ids: np.ndarray  # int64 [N]

    @classmethod
    def available_splits(cls, root: Path | None) -> tuple[str, ...]:
        """The splits this data set has; overridden where they depend on the files."""
        return cls.splits

    @abc.abstractmethod
    def image(self, index: int) -> Image.Image:
        """Decode image `index` (mode "RGB" or "L")."""

    def __len__(self) -> int:
        return len(self.coarse_labels)

    def __getitem__(self, index: SupportsIndex) -> Item:
        i = operator.index(index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(
                f"index {index} out of range for {self.name}/{self.split} of {n} items"
            )
        i %= n
        fine = None if self.fine_labels is None else int(self.fine_labels[i])
        return Item(
            image=self.image(i),
            coarse=int(self.coarse_labels[i]),
            fine=None if fine is None or fine < 0 else fine,
            id=int(self.ids[i]),
        )

    def summary(self) -> dict[str, object]:
        """Counts to print before a run, so a wrong root or split shows at once."""
        fine = self.fine_labels
        return {
            "name": self.name,
            "split": self.split,
            "images": len(self),
            "coarse_classes": len(self.coarse_classes),
            "fine_classes": 0 if self.fine_classes is None else len(self.fine_classes),
            "images_with_fine": 0 if fine is None else int((fine >= 0).sum()),
        }

    def _check_labels(self, source: str | Path) -> None:
        """Check that labels fit the class lists and the arrays agree; `source` names the file."""
        n = len(self.coarse_labels)
        check_labels(
            self.coarse_labels, len(self.coarse_classes), source, "coarse", allow_missing=False
        )
        if self.fine_labels is not None:
            if self.fine_classes is None:
                raise DatasetError(f"{source}: fine labels given without fine class names")
            check_labels(
                self.fine_labels, len(self.fine_classes), source, "fine", allow_missing=True
            )
            assert len(self.fine_labels) == n, "fine and coarse labels differ in length"
        assert self.ids.dtype == np.int64 and self.ids.shape == (n,), "ids must be int64 [N]"


def check_labels(
    labels: np.ndarray, num_classes: int, source: str | Path, what: str, allow_missing: bool
) -> None:
    """Raise DatasetError unless `labels` is int64 [N] in [0, num_classes) (or -1 if allowed)."""
    assert labels.dtype == np.int64 and labels.ndim == 1, f"{what} labels must be int64 [N]"
    low = -1 if allow_missing else 0
    if len(labels) and (labels.min() < low or labels.max() >= num_classes):
        raise DatasetError(
            f"{source}: expected {what} labels in [{low}, {num_classes}) "
            f"but found values {labels.min()}..{labels.max()}"
        )


def check_split(split: str, valid: Sequence[str], source: str | Path) -> None:
    """Raise DatasetError listing the valid splits when `split` is not one of them."""
    if split not in valid:
        raise DatasetError(f"{source}: unknown split {split!r}; expected one of {list(valid)}")


def class_index(names: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted unique class names and their indices: label order must not depend on file order."""
    classes = sorted(set(names))
    return classes, {name: i for i, name in enumerate(classes)}
