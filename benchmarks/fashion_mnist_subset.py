"""Write a Fashion-MNIST root with a class-balanced subset of the training images and the full
test split, as IDX files the `fashion-mnist` data set reads (`--root DIR`).

    python benchmarks/fashion_mnist_subset.py --per-class 2000 --out runs/fm-20k
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

from coins.retrieval.data.fashion_mnist import DEFAULT_ROOT
from coins.retrieval.data.idx import IMAGES_MAGIC, LABELS_MAGIC, find_idx, read_idx


def write_subset(out: Path, per_class: int, seed: int = 0, root: Path = DEFAULT_ROOT) -> None:
    images = read_idx(find_idx(root, "train-images-idx3-ubyte"), IMAGES_MAGIC)  # [N,28,28]
    labels = read_idx(find_idx(root, "train-labels-idx1-ubyte"), LABELS_MAGIC)  # [N]
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        for c in np.unique(labels)
    ]))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    n = len(keep)
    (out / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", IMAGES_MAGIC, n, 28, 28) + images[keep].tobytes()
    )
    (out / "train-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", LABELS_MAGIC, n) + labels[keep].astype(np.uint8).tobytes()
    )
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (out / name).write_bytes(gzip.decompress(find_idx(root, name).read_bytes()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    write_subset(a.out, a.per_class, a.seed)


if __name__ == "__main__":
    main()
