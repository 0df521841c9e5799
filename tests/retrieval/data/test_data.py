"""The synthetic patches data set, the registry and the common data set behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coins.retrieval.data import (
    DatasetError,
    Item,
    RetrievalDataset,
    build_dataset,
    dataset_names,
    dataset_options,
    dataset_splits,
    register_dataset,
    registry,
)
from coins.retrieval.data.synthetic import SyntheticPatches


@pytest.fixture(scope="module")
def train() -> SyntheticPatches:
    return SyntheticPatches("train")


@pytest.fixture(scope="module")
def test() -> SyntheticPatches:
    return SyntheticPatches("test")


# --- synthetic patches -----------------------------------------------------------------------


def test_synthetic_is_deterministic_for_a_seed(train: SyntheticPatches) -> None:
    again = build_dataset("synthetic-patches", "train")
    assert isinstance(again, SyntheticPatches)
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.boxes, train.boxes)
    np.testing.assert_array_equal(again.coarse_labels, train.coarse_labels)
    np.testing.assert_array_equal(again.fine_labels, train.fine_labels)


def test_synthetic_seeds_and_splits_differ(train: SyntheticPatches, test: SyntheticPatches) -> None:
    other = SyntheticPatches("train", seed=1)
    assert not np.array_equal(other.images, train.images)
    assert not np.array_equal(other.small_patches, train.small_patches)
    assert not np.array_equal(test.images, train.images)
    # one pool for both splits: a class looks the same in train and test
    np.testing.assert_array_equal(test.small_patches, train.small_patches)
    np.testing.assert_array_equal(test.big_patches, train.big_patches)


def test_synthetic_counts_classes_and_ids(train: SyntheticPatches, test: SyntheticPatches) -> None:
    assert len(train) == len(test) == 512
    assert train.coarse_classes[3] == "big-03" and len(train.coarse_classes) == 32
    assert train.fine_classes is not None and train.fine_classes[17] == "small-017"
    assert train.summary() == {
        "name": "synthetic-patches",
        "split": "train",
        "images": 512,
        "coarse_classes": 32,
        "fine_classes": 128,
        "images_with_fine": 512,
    }
    assert train.coarse_labels.dtype == train.ids.dtype == np.int64
    np.testing.assert_array_equal(train.ids, np.arange(512))
    np.testing.assert_array_equal(test.ids, 512 + np.arange(512))
    # balanced: every fine class shows up 512 / 128 times
    assert train.fine_labels is not None
    assert np.bincount(train.fine_labels, minlength=128).tolist() == [4] * 128
    assert train.images.shape == (512, 32, 32, 3) and train.images.dtype == np.uint8


def test_synthetic_nested_mapping(train: SyntheticPatches, test: SyntheticPatches) -> None:
    mapping = train.fine_to_coarse
    assert mapping is not None
    assert np.bincount(mapping, minlength=32).tolist() == [4] * 32  # 128 / 32 per coarse class
    for data in (train, test):
        assert data.fine_labels is not None
        np.testing.assert_array_equal(data.coarse_labels, mapping[data.fine_labels])
        for f in np.unique(data.fine_labels):
            assert len(np.unique(data.coarse_labels[data.fine_labels == f])) == 1


def test_synthetic_boxes_inside_and_apart(train: SyntheticPatches) -> None:
    boxes = train.boxes
    assert boxes.shape == (512, 2, 4) and boxes.dtype == np.int64
    assert (boxes >= 0).all() and (boxes <= 32).all()
    np.testing.assert_array_equal(boxes[:, 0, 2:] - boxes[:, 0, :2], 14)
    np.testing.assert_array_equal(boxes[:, 1, 2:] - boxes[:, 1, :2], 6)
    big, small = boxes[:, 0], boxes[:, 1]
    overlap_x = (big[:, 0] < small[:, 2]) & (small[:, 0] < big[:, 2])
    overlap_y = (big[:, 1] < small[:, 3]) & (small[:, 1] < big[:, 3])
    assert not (overlap_x & overlap_y).any()


def test_synthetic_pixels_match_labels(train: SyntheticPatches) -> None:
    assert train.fine_labels is not None
    for i in range(0, 512, 7):
        item = train[i]
        pixels = np.asarray(item.image)
        (bx0, by0, bx1, by1), (sx0, sy0, sx1, sy1) = train.boxes[i]
        np.testing.assert_array_equal(pixels[sy0:sy1, sx0:sx1], train.small_patches[item.fine])
        np.testing.assert_array_equal(pixels[by0:by1, bx0:bx1], train.big_patches[item.coarse])
        blank = np.ones((32, 32), dtype=bool)
        blank[by0:by1, bx0:bx1] = blank[sy0:sy1, sx0:sx1] = False
        assert (pixels[blank] == 0).all()  # the canvas is black elsewhere
    # patches are distinguishable from each other and from the canvas
    assert len({p.tobytes() for p in train.small_patches}) == 128
    assert len({p.tobytes() for p in train.big_patches}) == 32
    assert train.small_patches.min() > 0


def test_synthetic_not_nested() -> None:
    data = SyntheticPatches("train", nested=False, num_coarse=4, num_fine=6, num_train=60)
    assert data.fine_to_coarse is None and data.fine_labels is not None
    pairs = {(int(c), int(f)) for c, f in zip(data.coarse_labels, data.fine_labels, strict=True)}
    assert len({f for _, f in pairs}) == 6
    assert len(pairs) > 6  # a fine class appears with several coarse classes
    assert np.bincount(data.coarse_labels).tolist() == [15] * 4


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"num_fine": 100}, "multiple of num_coarse"),
        ({"image_size": 20}, "no room"),
        ({"num_train": 0}, "num_train a positive int"),
        ({"big_size": 2.5}, "big_size a positive int"),
    ],
)
def test_synthetic_bad_options(options: dict[str, Any], words: str) -> None:
    with pytest.raises(DatasetError, match=words):
        build_dataset("synthetic-patches", **options)


def test_synthetic_takes_no_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="root=None"):
        build_dataset("synthetic-patches", root=tmp_path)


# --- common behaviour ------------------------------------------------------------------------


def test_items_and_indexing(test: SyntheticPatches) -> None:
    assert isinstance(test, RetrievalDataset)  # a map-style data set for torch's DataLoader
    item = test[-1]
    assert isinstance(item, Item)
    assert item.image.mode == "RGB" and item.image.size == (32, 32)
    assert item.id == 1023 and item.fine == int(test.fine_labels[-1])  # type: ignore[index]
    assert test[np.int64(5)].id == 517
    with pytest.raises(IndexError):
        test[512]


# --- registry --------------------------------------------------------------------------------


def test_registry_names_and_splits() -> None:
    names = dataset_names()
    assert names == sorted(names)
    assert {"synthetic-patches", "fashion-mnist", "cifar100", "sop", "folder", "csv"} <= set(names)
    assert dataset_splits("synthetic-patches") == ("train", "test")
    assert dataset_splits("fashion-mnist") == ("train", "test")
    assert dataset_splits("folder") == ("all",)
    assert dataset_options("synthetic-patches")["num_fine"] == 128


def test_registry_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(DatasetError, match="unknown data set 'imagenet'") as err:
        build_dataset("imagenet")
    for name in dataset_names():
        assert name in str(err.value)
    with pytest.raises(DatasetError, match="synthetic-patches"):
        dataset_splits("nope")


def test_registry_unknown_split_and_option() -> None:
    with pytest.raises(DatasetError, match=r"unknown split 'val'.*\['train', 'test'\]"):
        build_dataset("synthetic-patches", "val")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['num_fines'\].*num_fine"):
        build_dataset("synthetic-patches", num_fines=3)


def test_register_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    @register_dataset("tiny")
    class Tiny(SyntheticPatches):
        pass

    assert Tiny.name == "tiny" and "tiny" in dataset_names()
    data = build_dataset("tiny", "test", num_test=8, seed=2)
    assert isinstance(data, Tiny) and len(data) == 8 and data.summary()["name"] == "tiny"
    with pytest.raises(DatasetError, match="already taken"):
        register_dataset("tiny")(SyntheticPatches)


def test_synthetic_anchored_layout_keeps_patches_near_their_corners() -> None:
    data = build_dataset("synthetic-patches", "train", layout="anchored", jitter=2)
    big, small = data.boxes[:, 0], data.boxes[:, 1]
    assert big[:, :2].min() >= 0 and big[:, :2].max() <= 4  # anchor 2, moved by at most 2
    assert small[:, 2:].max() <= 32 and small[:, :2].min() >= 32 - 6 - 4
    assert len({tuple(b) for b in big[:, :2].tolist()}) > 1  # it does move
    with pytest.raises(DatasetError, match="layout"):
        build_dataset("synthetic-patches", "train", layout="grid")
    with pytest.raises(DatasetError, match="jitter"):
        build_dataset("synthetic-patches", "train", layout="anchored", jitter=5)
