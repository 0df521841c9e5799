"""CIFAR-100, python version: 20 coarse superclasses over 100 fine classes, 32x32 RGB.

The fine-to-coarse relation is read from the pickles' own `coarse_labels`, never written by hand.
The pickles are read by an unpickler that only builds plain containers and numpy arrays, so a
tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import DatasetError, RetrievalDataset, check_labels, check_split
from .registry import register_dataset

FOLDER = "cifar-100-python"
_TEST_ID_OFFSET = 50_000  # the official train size: test ids follow the train ids
_SIDE = 32
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # what numpy pickles arrays with
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # ... with pickle protocol 5
_SCALAR = np.int64(0).__reduce__()[0]  # what numpy pickles scalars with
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
}


@register_dataset("cifar100")
class CIFAR100(RetrievalDataset):
    """Splits train (50,000) and test (10,000); `root` is `cifar-100-python` or its parent."""

    def __init__(self, split: str = "train", root: Path | None = None) -> None:
        if root is None:
            raise DatasetError(f"cifar100: expected root, the folder {FOLDER!r} (no download)")
        root = Path(root)
        check_split(split, self.splits, root)
        if (root / FOLDER).is_dir():
            root = root / FOLDER
        path = root / split
        batch = _load_pickle(path, (b"data", b"fine_labels", b"coarse_labels"))
        meta = _load_pickle(root / "meta", (b"fine_label_names", b"coarse_label_names"))

        data = batch[b"data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise DatasetError(f"{path}: expected b'data' a uint8 array [N, 3072]")
        if data.shape[1] != 3 * _SIDE * _SIDE:
            raise DatasetError(f"{path}: expected b'data' rows of 3072 bytes, got {data.shape[1]}")
        self.images = data.reshape(-1, 3, _SIDE, _SIDE)  # uint8 [N,3,32,32], planes R, G, B

        self.split = split
        self.coarse_classes = _names(meta, b"coarse_label_names", root / "meta")
        self.fine_classes = _names(meta, b"fine_label_names", root / "meta")
        self.coarse_labels = _labels(batch, b"coarse_labels", len(data), path)
        self.fine_labels = _labels(batch, b"fine_labels", len(data), path)
        check_labels(self.fine_labels, len(self.fine_classes), path, "fine", allow_missing=False)
        offset = 0 if split == "train" else _TEST_ID_OFFSET
        self.ids = np.arange(offset, offset + len(data), dtype=np.int64)
        self._check_labels(path)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.images[index].transpose(1, 2, 0)))


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _load_pickle(path: Path, keys: tuple[bytes, ...]) -> dict[bytes, Any]:
    """The dict in `path`, checked to hold `keys` (CIFAR pickles use bytes keys)."""
    try:
        with path.open("rb") as file:
            content = _SafeUnpickler(file, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: expected this CIFAR-100 pickle, file not found") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise DatasetError(f"{path}: expected a CIFAR-100 python pickle: {err}") from err
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    missing = [key for key in keys if key not in content]
    if missing:
        raise DatasetError(f"{path}: expected keys {list(keys)}, missing {missing}")
    return content


def _names(meta: dict[bytes, Any], key: bytes, path: Path) -> list[str]:
    names = meta[key]
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DatasetError(f"{path}: expected {key!r} a list of names")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def _labels(batch: dict[bytes, Any], key: bytes, count: int, path: Path) -> np.ndarray:
    labels = np.asarray(batch[key])
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{path}: expected {key!r} {count} integer labels, found shape {labels.shape}"
        )
    return labels.astype(np.int64)
