"""--test-fraction: a seeded train/test split of a gallery without one, refusing empty classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coins.retrieval.data import DatasetError, build_dataset
from coins.retrieval.data.product_photos import write_product_photos
from coins.retrieval.data.split import build_split, held_for_test, split_dataset


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 photos of 12 products (8 each) of 4 shapes, 24-40 px, no split folders."""
    out = tmp_path_factory.mktemp("products")
    write_product_photos(out, 96, products=12, coarse=4, sizes=(24, 40), seed=2, workers=1)
    return out


def _labels(per_class: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    coarse = [c for (c, f), n in per_class.items() for _ in range(n)]
    fine = [f for (c, f), n in per_class.items() for _ in range(n)]
    return np.array(coarse), np.array(fine)


def test_item_split_takes_the_fraction_of_every_fine_class() -> None:
    coarse, fine = _labels({(0, 0): 10, (0, 1): 5, (1, 2): 3, (1, 3): 2})
    test = held_for_test(coarse, fine, 0.2, "item", seed=0)
    counts = {f: int((fine[test] == f).sum()) for f in range(4)}
    # round(0.2 n) halves up, at least 1 and at most n - 1: 10 -> 2, 5 -> 1, 3 -> 1, 2 -> 1
    assert counts == {0: 2, 1: 1, 2: 1, 3: 1}
    assert (np.diff(test) > 0).all()


def test_item_split_is_seeded() -> None:
    coarse, fine = _labels({(0, 0): 40, (1, 1): 40})
    a = held_for_test(coarse, fine, 0.25, "item", seed=3)
    assert np.array_equal(a, held_for_test(coarse, fine, 0.25, "item", seed=3))
    assert not np.array_equal(a, held_for_test(coarse, fine, 0.25, "item", seed=4))


def test_fine_split_moves_whole_products_per_coarse_class() -> None:
    coarse, fine = _labels({(0, 0): 4, (0, 1): 4, (0, 2): 4, (0, 3): 4, (1, 4): 3, (1, 5): 3})
    test = held_for_test(coarse, fine, 0.25, "fine", seed=0)
    in_test = set(fine[test].tolist())
    assert len(in_test & {0, 1, 2, 3}) == 1 and len(in_test & {4, 5}) == 1  # one of each
    train = np.setdiff1d(np.arange(len(fine)), test)
    assert not in_test & set(fine[train].tolist())  # no product on both sides


def test_gallery_split_by_item(gallery: Path) -> None:
    whole = build_dataset("folder", "all", gallery)
    parts = split_dataset(whole, 0.25, "item", seed=0)
    train, test = parts["train"], parts["test"]
    assert (train.split, test.split) == ("train", "test")
    assert len(train) + len(test) == 96 and len(test) == 12 * 2  # 8 per product: 2 to test
    assert set(train.ids.tolist()).isdisjoint(test.ids.tolist())
    assert set(test.fine_labels.tolist()) == set(range(12)) == set(train.fine_labels.tolist())
    same = build_split("folder", "test", gallery, {}, 0.25, "item", seed=0)
    assert np.array_equal(same.ids, test.ids) and same.image(0).size == test.image(0).size


def test_gallery_split_by_fine(gallery: Path) -> None:
    test = build_split("folder", "test", gallery, {}, 0.34, "fine", seed=1)
    train = build_split("folder", "train", gallery, {}, 0.34, "fine", seed=1)
    assert set(test.coarse_labels.tolist()) == set(range(4))  # every shape asked about
    assert set(test.fine_labels.tolist()).isdisjoint(train.fine_labels.tolist())


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_0_1_is_refused(gallery: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)|splits nothing"):
        held_for_test(np.zeros(4, np.int64), None, fraction, "item", seed=0)


def test_split_by_must_be_known() -> None:
    with pytest.raises(ValueError, match=r"split_by 'product': expected one of item, fine"):
        held_for_test(np.zeros(4, np.int64), None, 0.2, "product", seed=0)


def test_a_class_left_without_test_images_is_refused() -> None:
    from coins.retrieval.data.holdout import HeldOut

    base = _FakeData(coarse=[0, 0, 0, 1], fine=[0, 0, 1, 2])
    with pytest.raises(DatasetError, match=r"leaves coarse class\(es\) \['b'\] with no test"):
        split_dataset(base, 0.5, "item", seed=0)
    with pytest.raises(DatasetError, match=r"no test images .* two fine classes or more"):
        split_dataset(_FakeData(coarse=[0, 0, 1, 1], fine=[0, 1, 2, 2]), 0.5, "fine", seed=0)
    assert isinstance(split_dataset(_FakeData([0, 0, 1, 1], [0, 0, 1, 1]), 0.5)["test"], HeldOut)


def test_fine_split_needs_fine_labels() -> None:
    with pytest.raises(DatasetError, match="no fine labels; use split_by item"):
        held_for_test(np.array([0, 0, 1, 1]), None, 0.5, "fine", seed=0)


def test_a_gallery_with_its_own_splits_is_refused(tmp_path: Path, gallery: Path) -> None:
    import shutil

    shutil.copytree(gallery, tmp_path / "train")
    shutil.copytree(gallery, tmp_path / "test")
    with pytest.raises(ValueError, match=r"has the splits \['train', 'test'\]: drop"):
        build_split("folder", "train", tmp_path, {}, 0.2)


def test_csv_without_split_column(tmp_path: Path, gallery: Path) -> None:
    files = sorted(p.relative_to(gallery) for p in gallery.rglob("*.jpg"))
    rows = [f"{gallery / p},{p.parts[0]},{p.parts[1]}" for p in files]
    (tmp_path / "m.csv").write_text("path,coarse,fine\n" + "\n".join(rows) + "\n")
    test = build_split("csv", "test", tmp_path / "m.csv", {}, 0.25, "item", seed=0)
    assert len(test) == 24 and set(test.fine_labels.tolist()) == set(range(12))


class _FakeData:
    """Labels only: what split_dataset reads."""

    def __init__(self, coarse: list[int], fine: list[int]) -> None:
        self.coarse_labels = np.array(coarse)
        self.fine_labels = np.array(fine)
        self.coarse_classes = ["a", "b"]
        self.fine_classes = None
        self.ids = np.arange(len(coarse))
        self.split = "all"

    def __len__(self) -> int:
        return len(self.coarse_labels)
