"""A recipe sized to its gallery: batch, queue and epochs follow the training images."""

from __future__ import annotations

import pytest

from coins.retrieval.presets import MIN_STEPS, get_preset, size_for_gallery


def test_rgb_224_on_100_images() -> None:
    """The issue's case: K 4096, batch 64 and 100 epochs on 100 images was one step an epoch."""
    train = {**get_preset("rgb-224").train, "batch_size": 64, "K": 4096, "epochs": 50}
    sized, why = size_for_gallery(train, 100)
    assert sized["batch_size"] == 24  # a quarter of 100, even
    assert sized["K"] == 48 and sized["K"] % 24 == 0  # half at most, a multiple of the batch
    steps = 100 // sized["batch_size"]
    assert steps >= 4 and steps * sized["epochs"] >= MIN_STEPS
    assert len(why) == 3 and all(str(v) in " ".join(why) for v in (24, 48, sized["epochs"]))


def test_a_large_gallery_keeps_the_recipe() -> None:
    train = {"batch_size": 128, "K": 8192, "epochs": 4}
    assert size_for_gallery(train, 60_000) == (train, [])


def test_options_the_user_set_stay() -> None:
    train = {"batch_size": 64, "K": 4096, "epochs": 2}
    sized, why = size_for_gallery(train, 100, fixed={"batch_size", "epochs"})
    assert sized["batch_size"] == 64 and sized["epochs"] == 2
    assert sized["K"] == 64 and len(why) == 1  # the queue still fits the data


@pytest.mark.parametrize("n", [0, 5, 15])
def test_too_few_images_name_the_fix(n: int) -> None:
    with pytest.raises(
        ValueError, match=rf"{n} training images are too few to train .* add images"
    ):
        size_for_gallery({"batch_size": 64}, n)


def test_the_smallest_gallery_trains() -> None:
    sized, _ = size_for_gallery({"batch_size": 64, "K": 4096, "epochs": 10}, 16)
    assert (sized["batch_size"], sized["K"]) == (4, 8) and sized["epochs"] * 4 >= MIN_STEPS
