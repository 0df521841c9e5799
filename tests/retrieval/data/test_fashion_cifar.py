"""Data sets stored as arrays in files: Fashion-MNIST (IDX) and CIFAR-100 (python pickle)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from coins.retrieval.data import DatasetError, build_dataset
from coins.retrieval.data.fashion_mnist import DEFAULT_ROOT, FINE_TO_COARSE

# --- Fashion-MNIST ---------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def fashion_tree(root: Path, train: int = 12, test: int = 5) -> np.ndarray:
    """Train files gzipped, test files plain; returns the train images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(train, 28, 28), dtype=np.uint8)
    write_idx(root / "train-images-idx3-ubyte.gz", images, 0x803)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(train) % 10, 0x801)
    write_idx(root / "t10k-images-idx3-ubyte", images[:test], 0x803)
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(test)[::-1] % 10, 0x801)
    return images


def test_fashion_mnist_small_files(tmp_path: Path) -> None:
    images = fashion_tree(tmp_path)
    train = build_dataset("fashion-mnist", "train", root=tmp_path)
    test = build_dataset("fashion-mnist", "test", root=str(tmp_path))
    assert len(train) == 12 and len(test) == 5
    assert train.coarse_classes == ["Tops", "Bottoms", "Dresses", "Outers", "Shoes", "Accessories"]
    assert train.fine_classes is not None and train.fine_classes[9] == "Ankle boot"
    assert train.fine_labels is not None
    np.testing.assert_array_equal(train.fine_labels, np.arange(12) % 10)
    named = [
        (train.fine_classes[f], train.coarse_classes[c])
        for f, c in zip(train.fine_labels[:10], train.coarse_labels[:10], strict=True)
    ]
    assert ("Shirt", "Tops") in named and ("Bag", "Accessories") in named
    assert ("Sneaker", "Shoes") in named and ("Coat", "Outers") in named
    item = train[3]
    assert item.image.mode == "L" and item.image.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(item.image), images[3])
    assert (item.coarse, item.fine, item.id) == (2, 3, 3)
    assert test[0].id == 60_000 and test[0].fine == 4


def test_fashion_mnist_truncated_file(tmp_path: Path) -> None:
    fashion_tree(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    expected, actual = 16 + 5 * 28 * 28, 16 + 5 * 28 * 28 - 10
    with pytest.raises(DatasetError, match="truncated") as err:
        build_dataset("fashion-mnist", "test", root=tmp_path)
    assert str(path) in str(err.value)
    assert f"expected {expected} bytes" in str(err.value) and f"got {actual}" in str(err.value)


def test_fashion_mnist_truncated_gzip(tmp_path: Path) -> None:
    fashion_tree(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz"):
        build_dataset("fashion-mnist", root=tmp_path)


def test_fashion_mnist_wrong_magic(tmp_path: Path) -> None:
    fashion_tree(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5), 0x803)  # an images magic
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.*magic number 0x00000801"):
        build_dataset("fashion-mnist", "test", root=tmp_path)


def test_fashion_mnist_mismatched_counts(tmp_path: Path) -> None:
    fashion_tree(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4), 0x801)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: expected one label per image"):
        build_dataset("fashion-mnist", "test", root=tmp_path)


def test_fashion_mnist_bad_label_and_size(tmp_path: Path) -> None:
    fashion_tree(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(5, 10), 0x801)
    with pytest.raises(DatasetError, match=r"fine labels in \[0, 10\)"):
        build_dataset("fashion-mnist", "test", root=tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 27)), 0x803)
    with pytest.raises(DatasetError, match="28x28"):
        build_dataset("fashion-mnist", "test", root=tmp_path)


def test_fashion_mnist_missing_dir_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(missing)):
        build_dataset("fashion-mnist", root=missing)
    fashion_tree(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.*found neither"):
        build_dataset("fashion-mnist", "test", root=tmp_path)


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").exists(), reason="no Debian Fashion-MNIST"
)
def test_fashion_mnist_debian_files() -> None:
    train, test = build_dataset("fashion-mnist"), build_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.summary()["coarse_classes"] == 6 and train.summary()["fine_classes"] == 10
    assert train.fine_labels is not None
    assert np.bincount(train.fine_labels).tolist() == [6000] * 10
    assert np.bincount(train.coarse_labels).tolist() == [18000, 6000, 6000, 6000, 18000, 6000]
    np.testing.assert_array_equal(train.coarse_labels, FINE_TO_COARSE[train.fine_labels])
    assert test[9999].id == 69_999 and test[0].image.size == (28, 28)


# --- CIFAR-100 -------------------------------------------------------------------------------


def cifar_tree(root: Path) -> np.ndarray:
    """Fine classes 0..3 in coarse classes [1, 0, 1, 0]; returns the train data."""
    folder = root / "cifar-100-python"
    folder.mkdir()
    meta = {
        b"fine_label_names": [b"apple", b"bee", b"pear", b"wasp"],
        b"coarse_label_names": [b"insects", b"fruit"],
    }
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    fine = [0, 1, 2, 3, 0, 1]
    for split, rows in (("train", 6), ("test", 3)):
        batch = {
            b"data": data[:rows],
            b"fine_labels": fine[:rows],
            b"coarse_labels": [[1, 0, 1, 0][f] for f in fine[:rows]],
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return data


def test_cifar100_tiny_pickle(tmp_path: Path) -> None:
    data = cifar_tree(tmp_path)
    train = build_dataset("cifar100", root=tmp_path)  # the parent of cifar-100-python
    test = build_dataset("cifar100", "test", root=tmp_path / "cifar-100-python")
    assert len(train) == 6 and len(test) == 3
    assert train.fine_classes == ["apple", "bee", "pear", "wasp"]
    assert train.coarse_classes == ["insects", "fruit"]
    assert train.coarse_labels.tolist() == [1, 0, 1, 0, 1, 0]
    item = train[4]
    assert item.image.mode == "RGB" and item.image.size == (32, 32)
    pixels = np.asarray(item.image)
    # rows are the red, green and blue planes in turn
    assert tuple(pixels[0, 1]) == (data[4, 1], data[4, 1024 + 1], data[4, 2048 + 1])
    assert (item.coarse, item.fine, item.id) == (1, 0, 4)
    assert test[2].id == 50_002


def test_cifar100_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="expected root"):
        build_dataset("cifar100")
    cifar_tree(tmp_path)
    folder = tmp_path / "cifar-100-python"
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DatasetError, match=r"test: expected keys.*missing \[b'fine_labels'"):
        build_dataset("cifar100", "test", root=folder)
    (folder / "test").write_bytes(pickle.dumps(os.getcwd))  # a callable: refused, never called
    with pytest.raises(DatasetError, match="refusing to load"):
        build_dataset("cifar100", "test", root=folder)
    (folder / "meta").unlink()
    with pytest.raises(DatasetError, match="meta: expected this CIFAR-100 pickle"):
        build_dataset("cifar100", root=folder)
