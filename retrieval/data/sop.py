"""Stanford Online Products: 12 coarse categories (super_class_id) over products (class_id).

The test products are disjoint from the train products, so each split numbers its own fine
classes; the coarse labels (super_class_id - 1) mean the same in both splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetError, check_split
from .images import FileDataset
from .registry import register_dataset

HEADER = ["image_id", "class_id", "super_class_id", "path"]
_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}


@register_dataset("sop")
class StanfordOnlineProducts(FileDataset):
    """Reads `root/Ebay_<split>.txt`; images (root/path) are decoded when an item is read."""

    def __init__(self, split: str = "train", root: Path | None = None) -> None:
        if root is None:
            raise DatasetError("sop: expected root, the Stanford_Online_Products folder")
        root = Path(root)
        check_split(split, self.splits, root)
        listing = root / _FILES[split]
        rows = _read_listing(listing)
        image_ids = np.array([r[0] for r in rows], dtype=np.int64)
        class_ids = np.array([r[1] for r in rows], dtype=np.int64)
        super_ids = np.array([r[2] for r in rows], dtype=np.int64)
        _check_nested(class_ids, super_ids, listing)
        _, first = np.unique(image_ids, return_index=True)
        if len(first) != len(image_ids):
            duplicated = np.setdiff1d(np.arange(len(image_ids)), first)[0]
            raise DatasetError(
                f"{listing}: expected unique image_id values, {image_ids[duplicated]} repeats"
            )

        products, fine = np.unique(class_ids, return_inverse=True)
        self.split = split
        self.coarse_classes = _coarse_names(super_ids, [r[3] for r in rows])
        self.fine_classes = [str(p) for p in products]
        self.coarse_labels = super_ids - 1
        self.fine_labels = fine.astype(np.int64)
        self.ids = image_ids
        self.paths = [root / r[3] for r in rows]
        self._check_labels(listing)


def _read_listing(path: Path) -> list[tuple[int, int, int, str]]:
    """Rows (image_id, class_id, super_class_id, path), checked for shape and positive ids."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DatasetError(f"{path}: expected the SOP listing {path.name}: {err}") from err
    if not lines or lines[0].split() != HEADER:
        raise DatasetError(f"{path}: expected the header {' '.join(HEADER)!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            image_id, class_id, super_id = (int(f) for f in fields[:3])
            if len(fields) != 4 or min(class_id, super_id) < 1:
                raise ValueError
        except ValueError:
            raise DatasetError(
                f"{path}:{number}: expected 'image_id class_id super_class_id path' with "
                f"class ids >= 1, got {line!r}"
            ) from None
        rows.append((image_id, class_id, super_id, fields[3]))
    if not rows:
        raise DatasetError(f"{path}: expected at least one image row")
    return rows


def _check_nested(class_ids: np.ndarray, super_ids: np.ndarray, path: Path) -> None:
    """A product lies in one category; anything else means a corrupt listing."""
    pairs = np.unique(np.stack([class_ids, super_ids], axis=1), axis=0)
    products, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        raise DatasetError(
            f"{path}: expected each class_id in one super_class_id, "
            f"class_id {products[counts > 1][0]} is in several"
        )


def _coarse_names(super_ids: np.ndarray, paths: list[str]) -> list[str]:
    """Names for super ids 1..max from the image folders ("bicycle_final"), else "super-<id>"."""
    names = {i: f"super-{i}" for i in range(1, int(super_ids.max()) + 1)}
    seen: set[int] = set()
    for super_id, path in zip(super_ids.tolist(), paths, strict=True):
        if super_id not in seen and "/" in path:
            names[super_id] = path.split("/", 1)[0]
            seen.add(super_id)
    return [names[i] for i in sorted(names)]
