"""Transforms: tensor shapes and channels, determinism, augmentation, config validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from coins.retrieval.data import (
    Augment,
    Preprocess,
    TransformedDataset,
    TwoViews,
    build_dataset,
    eval_transform,
    train_transform,
)

GREY = (0.5,), (0.25,)


def preprocess(in_chans: int, size: int = 16) -> Preprocess:
    if in_chans == 1:
        return Preprocess(input_size=size, in_chans=1, mean=GREY[0], std=GREY[1])
    return Preprocess(input_size=size)


def gradient(mode: str, size: tuple[int, int] = (40, 30)) -> Image.Image:
    img = Image.linear_gradient("L").resize(size)
    return (
        img
        if mode == "L"
        else Image.merge(
            "RGB", (img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), img.rotate(90))
        )
    )


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_shapes_and_dtypes(mode: str, in_chans: int) -> None:
    pre = preprocess(in_chans)
    img = gradient(mode)
    for transform in (eval_transform(pre), train_transform(pre, Augment(blur_p=0.5))):
        x = transform(img)
        assert x.shape == (in_chans, 16, 16) and x.dtype == torch.float32


def test_eval_is_deterministic_and_normalised() -> None:
    transform = eval_transform(Preprocess(input_size=8))
    img = gradient("RGB")
    assert torch.equal(transform(img), transform(img))
    white = transform(Image.new("RGB", (20, 12), (255, 255, 255)))
    torch.testing.assert_close(white, torch.full((3, 8, 8), 2.0))  # (1 - 0.5) / 0.25


def test_grey_repeats_into_rgb() -> None:
    x = eval_transform(Preprocess(input_size=8))(gradient("L"))
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_eval_resizes_shorter_side_then_crops_centre() -> None:
    img = Image.new("L", (30, 10), 0)
    img.paste(255, (10, 0, 20, 10))  # white middle third
    x = eval_transform(preprocess(1, size=10))(img)
    torch.testing.assert_close(x, torch.full((1, 10, 10), 2.0))


def test_two_views_differ() -> None:
    torch.manual_seed(0)
    views = TwoViews(train_transform(Preprocess(input_size=16), Augment()))
    a, b = views(gradient("RGB"))
    assert a.shape == b.shape == (3, 16, 16)
    assert not torch.equal(a, b)


def test_two_views_give_the_key_its_own_transform() -> None:
    views = TwoViews(lambda img: torch.zeros(1), key_transform=lambda img: torch.ones(1))
    q, k = views(gradient("L"))
    assert q.item() == 0 and k.item() == 1  # (query, key), in the order the training step reads
    assert "key=" in repr(views) and "key=" not in repr(TwoViews(lambda img: torch.zeros(1)))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_autoaugment_applies_to_grey_and_colour_views(mode: str) -> None:
    channels = 1 if mode == "L" else 3
    transform = train_transform(preprocess(channels), Augment(autoaugment=True))
    assert "AutoAugment" in repr(transform) and "AutoAugment" not in repr(
        train_transform(preprocess(channels), Augment())
    )
    assert transform(gradient(mode)).shape == (channels, 16, 16)


def test_grey_model_skips_colour_ops() -> None:
    transform = train_transform(preprocess(1), Augment(color_jitter=0.4, grayscale_p=1.0))
    names = repr(transform)
    assert "ColorJitter" not in names and "RandomGrayscale" not in names
    assert "ColorJitter" in repr(train_transform(preprocess(3), Augment()))


def test_transformed_dataset_batches() -> None:
    data = build_dataset("synthetic-patches", "test", num_test=10)
    pre = Preprocess()
    pairs = TransformedDataset(data, TwoViews(train_transform(pre, Augment())))
    (q, k), coarse, fine, ids, index = next(iter(DataLoader(pairs, batch_size=4)))
    assert q.shape == k.shape == (4, 3, 32, 32)
    assert index.tolist() == [0, 1, 2, 3] and ids.tolist() == [512, 513, 514, 515]
    assert coarse.tolist() == data.coarse_labels[:4].tolist()
    assert fine.tolist() == data.fine_labels[:4].tolist()  # type: ignore[index]
    single = TransformedDataset(data, eval_transform(pre))
    x = single[9][0]
    assert len(single) == 10 and isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"input_size": 0}, "input_size > 0"),
        ({"in_chans": 2}, "in_chans 1 or 3"),
        ({"in_chans": 1}, "expected 1 values in mean and std"),
        ({"mean": (0.5, 0.5)}, "expected 3 values"),
        ({"std": (0.2, 0.0, 0.2)}, "std > 0"),
    ],
)
def test_preprocess_validation(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Preprocess(**fields)  # type: ignore[arg-type]


def test_preprocess_round_trips_through_a_dict() -> None:
    pre = Preprocess(input_size=28, in_chans=1, mean=(0.3,), std=(0.3,))
    stored: dict[str, Any] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(pre).items()
    }
    assert Preprocess(**stored) == pre


@pytest.mark.parametrize(
    "fields",
    [{"crop_scale": (0.0, 1.0)}, {"crop_scale": (0.8, 0.5)}, {"color_jitter": -0.1}, {"blur_p": 2}],
)
def test_augment_validation(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Augment: expected"):
        Augment(**fields)  # type: ignore[arg-type]
