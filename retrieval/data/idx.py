"""The IDX format of MNIST-like data sets, read with numpy and checked before it is trusted.

Layout: a big-endian magic number (0x0000, the element type 0x08 = uint8, the number of
dimensions), one big-endian uint32 per dimension, then the elements in C order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .base import DatasetError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: [N, rows, cols]
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: [N]


def find_idx(root: Path, stem: str) -> Path:
    """`root/stem`, or else `root/stem.gz`; DatasetError naming both when neither exists."""
    for path in (root / stem, root / f"{stem}.gz"):
        if path.is_file():
            return path
    raise DatasetError(f"{root / stem}: expected this IDX file (plain or .gz), found neither")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array stored in `path` (gzip if it ends in .gz), whose magic must be `magic`."""
    data = _read_bytes(path)
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        found = data[:4].hex() if len(data) >= 4 else f"{len(data)} bytes"
        raise DatasetError(f"{path}: expected IDX magic number {magic:#010x}, found {found}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: expected a {header}-byte IDX header, file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: IDX file {problem}; expected {expected} bytes for dims {dims}, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes())
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # also a truncated or corrupt gzip stream
        raise DatasetError(f"{path}: expected a readable IDX file (plain or gzip): {err}") from err
