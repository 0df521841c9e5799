"""Fashion-MNIST with the two-level hierarchy of Seo & Shin (2019): 6 coarse over 10 fine classes.

Read from the four IDX files that Debian's `dataset-fashion-mnist` installs; the images stay one
uint8 array and become PIL images only on access.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetError, RetrievalDataset, check_labels, check_split
from .idx import IMAGES_MAGIC, LABELS_MAGIC, find_idx, read_idx
from .registry import register_dataset

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FINE_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
COARSE_CLASSES = ["Tops", "Bottoms", "Dresses", "Outers", "Shoes", "Accessories"]
# Tops {0, 2, 6}, Bottoms {1}, Dresses {3}, Outers {4}, Shoes {5, 7, 9}, Accessories {8}
FINE_TO_COARSE = np.array([0, 1, 0, 2, 3, 4, 0, 4, 5, 4], dtype=np.int64)
_FILES = {"train": "train", "test": "t10k"}
_TEST_ID_OFFSET = 60_000  # test ids follow the train ids, unique across splits
_SIDE = 28


@register_dataset("fashion-mnist")
class FashionMNIST(RetrievalDataset):
    """Splits train (60,000) and test (10,000) of 28x28 grey images, mode "L"."""

    def __init__(self, split: str = "train", root: Path | None = None) -> None:
        root = DEFAULT_ROOT if root is None else Path(root)
        check_split(split, self.splits, root)
        if not root.is_dir():
            raise DatasetError(f"{root}: expected a folder with the Fashion-MNIST IDX files")
        prefix = _FILES[split]
        image_path = find_idx(root, f"{prefix}-images-idx3-ubyte")
        label_path = find_idx(root, f"{prefix}-labels-idx1-ubyte")
        self.images = read_idx(image_path, IMAGES_MAGIC)  # uint8 [N,28,28]
        labels = read_idx(label_path, LABELS_MAGIC).astype(np.int64)  # [N]
        if self.images.shape[1:] != (_SIDE, _SIDE):
            raise DatasetError(
                f"{image_path}: expected {_SIDE}x{_SIDE} images, found {self.images.shape[1:]}"
            )
        if len(labels) != len(self.images):
            raise DatasetError(
                f"{label_path}: expected one label per image of {image_path} "
                f"({len(self.images)}), found {len(labels)}"
            )

        self.split = split
        self.coarse_classes = list(COARSE_CLASSES)
        self.fine_classes = list(FINE_CLASSES)
        check_labels(labels, len(FINE_CLASSES), label_path, "fine", allow_missing=False)
        self.fine_labels = labels
        self.coarse_labels = FINE_TO_COARSE[labels]
        offset = 0 if split == "train" else _TEST_ID_OFFSET
        self.ids = np.arange(offset, offset + len(labels), dtype=np.int64)
        self._check_labels(label_path)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])
