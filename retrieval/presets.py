"""The one table of presets: a recipe per kind of image, and per data set, sized for a 2-core CPU.

A preset is the embedder (input size, channels, statistics, backbone: what `coins eval` of a
random init needs) and the training options that go with it (`train`: TrainConfig options over
their defaults, read only by `coins.train.config.load_config`; they are kept here as plain data
so that a preset is one row of one table, not two tables to keep in step).

The image-kind presets (`grey-28`, `rgb-32`, `rgb-224`) are the recipes of the data sets they
come from; a data set without a preset of its own (`csv`, `folder`) gets the one closest to its
first image (`preset_for_data`). These are [design] choices sized for a 2-core CPU; pass a full
EmbedderConfig for GPU-sized runs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .configs import EmbedderConfig, Preprocess  # torch-free: `coins --help` reads presets

FASHION_MNIST = Preprocess(28, 1, (0.286,), (0.353,))
CIFAR100 = Preprocess(32, 3, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
IMAGENET = Preprocess(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SYNTHETIC = Preprocess(32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

# PIL modes that `load_image` reads as grey "L" (see data/images.py, `standard_mode`)
_GREY_MODES = {"1", "L", "LA", "La", "I", "F"}


@dataclass(frozen=True)
class Preset:
    """One recipe; `dataset` is the data set it was tuned on (None: any gallery of its kind)."""

    name: str
    about: str
    model: EmbedderConfig
    train: Mapping[str, Any]  # TrainConfig options (nested ones as dicts) over the defaults
    dataset: str | None = None


def _narrow_resnet(
    pre: Preprocess, channels: tuple[int, ...] = (32, 64, 128, 256)
) -> EmbedderConfig:
    """A ResNet-18 of reduced widths (half the usual by default): trainable on a CPU at 28-32 px."""
    kwargs = {"channels": list(channels)}
    return EmbedderConfig("resnet18", kwargs, head_hidden=256, head_dim=128, preprocess=pre)


GREY_28 = Preset(
    "grey-28",
    "28-px grey images: the Fashion-MNIST recipe (narrow ResNet-18, its statistics and crops)",
    _narrow_resnet(FASHION_MNIST),
    {
        "epochs": 4,
        "batch_size": 128,
        "K": 8192,
        "lr": 0.12,
        "warmup_epochs": 1,
        # L_cos weighted 8, not the released 0.5: chosen on held-out training images over 0.5
        # and 2, it beat `cos` on 3 seeds at a short budget (docs/results.md, "Fashion-MNIST
        # chosen on validation")
        "alpha": 8.0,
        "augment": {"crop_scale": [0.5, 1.0], "color_jitter": 0.0, "grayscale_p": 0.0},
    },
)
RGB_32 = Preset(
    "rgb-32",
    "32-px colour images: the CIFAR-100 recipe (narrow ResNet-18, its statistics, 200 epochs)",
    _narrow_resnet(CIFAR100),
    {
        "epochs": 200,
        "batch_size": 128,
        "K": 8192,
        "lr": 0.12,
        "weight_decay": 5e-4,
        "warmup_epochs": 5,
    },
)
RGB_224 = Preset(
    "rgb-224",
    "larger colour images: full-width ResNet-18 at 224 px, ImageNet statistics, the defaults",
    EmbedderConfig(preprocess=IMAGENET),
    {},
)
PRETRAINED_PHOTOS = Preset(
    "pretrained-photos",
    "photos from pretrained weights (chosen by --pretrained): the weights' architecture (a coins "
    "file names it; else model.backbone, ResNet-18 by default) and preprocessing, a gentle "
    "fine-tune (backbone lr x0.1, BatchNorm frozen, 1 head-only epoch), frozen stages (the "
    "stem and up to 2 first stages), input size and epochs fitted to 12 minutes of the "
    "machine it runs on",
    EmbedderConfig(preprocess=IMAGENET),  # the weights' own input size and statistics replace it
    {
        "epochs": 10,
        "batch_size": 32,
        "K": 1024,
        "lr": 0.03,
        "warmup_epochs": 0,
        # [design] a fine-tune keeps what the weights know: the backbone moves at a tenth of the
        # head's rate, its BatchNorm statistics stay, and the new head and classifier learn
        # alone for the first epoch so that their random start sends no noise into it
        "backbone_lr_mult": 0.1,
        "freeze_bn": True,
        "head_warmup_epochs": 1,
        "augment": {"crop_scale": [0.35, 1.0]},
        # [design] a first run answers within 12 minutes on the machine it runs on, whatever
        # the gallery's size: frozen stages (freeze_stages, at the weights' input size first),
        # then input size and epochs are fitted after timing a few steps there
        # (train/budget.py); --time-budget-min 0 trains the epochs above at the weights' size,
        # nothing frozen
        "time_budget_min": 12.0,
    },
)
SYNTHETIC_PATCHES = Preset(
    "synthetic-patches",
    "the generated patches: a quarter-width ResNet-18 that fits 5 minutes of a CPU",
    _narrow_resnet(SYNTHETIC, (16, 32, 64, 128)),
    {
        "epochs": 120,  # 120 epochs of a quarter-width ResNet-18 fit the 5-minute budget
        "batch_size": 64,
        "K": 256,  # below the 512 training images: a queue as long as the data set holds positives
        "num_workers": 0,  # in-memory images: loader workers only compete for the 2 cores
        "lr": 0.12,
        "warmup_epochs": 2,
        # L_cos at a quarter: 0.5 tied with `ins`, 0.25 beat it on 3 seeds and on a fresh data
        # draw (docs/results.md)
        "alpha": 0.25,
        "augment": {"crop_scale": [0.6, 1.0], "color_jitter": 0.0, "grayscale_p": 0.0},
    },
    dataset="synthetic-patches",
)


def _tuned_on(base: Preset, dataset: str) -> Preset:
    return dataclasses.replace(
        base, name=dataset, about=f"{base.name}: {base.about}", dataset=dataset
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        GREY_28,
        RGB_32,
        RGB_224,
        PRETRAINED_PHOTOS,
        SYNTHETIC_PATCHES,
        _tuned_on(GREY_28, "fashion-mnist"),
        _tuned_on(RGB_32, "cifar100"),
        _tuned_on(RGB_224, "sop"),
    )
}
PRETRAINED_PRESET = PRETRAINED_PHOTOS.name  # what `--pretrained` starts from, unless --preset
# what inference picks from: the image kinds trained from scratch
IMAGE_KINDS = tuple(p for p in PRESETS.values() if p.dataset is None and p is not PRETRAINED_PHOTOS)


def preset_names() -> list[str]:
    """Names of every preset: the image kinds first, then the data sets'."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """Preset `name` (a copy: changing it changes no later run); a ValueError naming the others."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; expected one of {', '.join(PRESETS)} (a data set without "
            "a preset of its own gets one from its images: preset_for_data)"
        ) from None


def model_preset(name: str, **overrides: Any) -> EmbedderConfig:
    """The embedder of preset `name` (a data set's or an image kind's), with field overrides."""
    return dataclasses.replace(get_preset(name).model, **overrides)


def closest_preset(side: int, channels: int) -> Preset:
    """The image-kind preset closest to images of shorter side `side` px and `channels` (1 or 3).

    Distance: |log2(side / input_size)| + 1 if the channels differ, so a size twice off weighs
    as much as grey against colour (28-px grey -> grey-28, 28-px colour -> rgb-32, 150-px grey
    -> rgb-224: grey repeats into three channels rather than shrinking to 28 px).
    """

    def distance(p: Preset) -> float:
        pre = p.model.preprocess
        return abs(math.log2(side / pre.input_size)) + (pre.in_chans != channels)

    return min(IMAGE_KINDS, key=distance)


def preset_for_data(
    dataset: str, root: str | Path | None = None, options: Mapping[str, Any] | None = None
) -> tuple[Preset, str]:
    """The data set's own preset, or else the image kind closest to its first image; with why.

    The first image of the `train` split (or of the only split) is looked at through its file
    header only. An inferred choice is also printed to stderr: it decides the model's input.
    """
    if dataset in PRESETS:
        return get_preset(dataset), f"preset {dataset}: the data set's own"
    side, channels, what = _first_image(dataset, root, options or {})
    chosen = closest_preset(side, channels)
    pre = chosen.model.preprocess
    reason = (
        f"{dataset} has no preset of its own; its first image {what} so preset {chosen.name} "
        f"({pre.input_size} px, {pre.in_chans} channel{'s' * (pre.in_chans > 1)}) is the "
        f"closest of {', '.join(p.name for p in IMAGE_KINDS)}; choose another with --preset NAME"
    )
    print(f"coins: {reason}", file=sys.stderr)
    return copy.deepcopy(chosen), reason


def _first_image(
    dataset: str, root: str | Path | None, options: Mapping[str, Any]
) -> tuple[int, int, str]:
    """(shorter side, channels, a description) of the first image of the data set."""
    from PIL import Image

    from .data import DatasetError, build_dataset, dataset_splits
    from .data.images import FileDataset

    splits = dataset_splits(dataset, root)
    split = "train" if "train" in splits else splits[0]
    data = build_dataset(dataset, split, root, **options)
    if len(data) == 0:
        raise DatasetError(f"{dataset}/{split}: no images to choose a preset from")
    if isinstance(data, FileDataset):
        path = data.paths[0]
        try:
            with Image.open(path) as header:  # reads the header, not the pixels
                size, mode = header.size, header.mode
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{path}: expected a readable image: {err}") from err
        name = str(path)
    else:
        img = data.image(0)
        size, mode, name = img.size, img.mode, f"{dataset}/{split}[0]"
    channels = 1 if mode in _GREY_MODES or mode.startswith("I;") else 3
    kind = "grey" if channels == 1 else "colour"
    return min(size), channels, f"{name} is {size[0]}x{size[1]} {kind} (mode {mode}),"


# Sizing a recipe to the gallery it trains on ([design], issue 23): a preset is written for a
# data set of its kind, thousands of images or more; a gallery of a few hundred would get one
# step per epoch and a queue longer than itself.
MIN_TRAIN_IMAGES = 16  # a batch of 4 is a quarter of them, a queue of 8 half: less cannot train
MIN_STEPS = 300  # optimiser steps a run takes at least ([design]: the warm-up and cosine need room)


def check_trainable(n_images: int) -> None:
    """A ValueError naming the fix when `n_images` training images cannot train."""
    if n_images < MIN_TRAIN_IMAGES:
        raise ValueError(
            f"{n_images} training images are too few to train (at least {MIN_TRAIN_IMAGES}: a "
            "batch of 4 and a queue of 8 below them); add images (or lower --test-fraction)"
        )


def size_for_gallery(
    train: Mapping[str, Any], n_images: int, fixed: set[str] | frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[str]]:
    """The options `train` (batch_size, K, epochs, ...) sized for `n_images` training images,
    and a reason for each change; keys in `fixed` (set by the user) are never changed.

    The batch takes at most a quarter of the images (an epoch has four steps or more), the
    queue K at most half of them (a queue as long as the data would hold keys of the query's
    own image as negatives) and is a multiple of the batch, and the run takes `MIN_STEPS`
    steps at least. Fewer than `MIN_TRAIN_IMAGES` images is a ValueError naming the fix.
    """
    check_trainable(n_images)
    out, why = dict(train), []
    batch = int(out.get("batch_size", 64))
    most = max(n_images // 4 // 2 * 2, 4)  # a quarter, even (shuffle-BN halves the batch)
    if batch > most and "batch_size" not in fixed:
        out["batch_size"] = batch = most
        why.append(f"batch {batch}: a quarter of the {n_images} training images at most")
    K = int(out.get("K", 4096))
    longest = max(n_images // 2 // batch * batch, batch)
    if (longest < K or K % batch) and "K" not in fixed:
        out["K"] = K = min(longest, max(K // batch * batch, batch))
        why.append(f"queue K {K}: half the training images at most, a multiple of the batch")
    steps = n_images // batch
    epochs = int(out.get("epochs", 100))
    if steps * epochs < MIN_STEPS and "epochs" not in fixed:
        out["epochs"] = epochs = math.ceil(MIN_STEPS / steps)
        why.append(f"epochs {epochs}: {steps} steps per epoch, {MIN_STEPS} steps at least")
    return out, why
