"""From a PIL image to the tensor a model expects, for evaluation and for contrastive training.

`Preprocess` is what the model was trained with (size, channels, normalisation): it is saved in
every checkpoint and exported model so that the same images give the same embeddings later.
`Augment` is only the strength of the training augmentation (two views per image, as in MoCo).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .base import RetrievalDataset

Views = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class Preprocess:
    """What the model expects: square `input_size` images of `in_chans` (1 or 3) channels,
    normalised per channel by `mean` and `std` after scaling to [0, 1]."""

    input_size: int = 32
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        # configs read back from JSON/YAML give lists; keep tuples so instances compare equal
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int):
            raise ValueError(f"Preprocess: expected input_size an int, got {self.input_size!r}")
        if self.input_size <= 0:
            raise ValueError(f"Preprocess: expected input_size > 0, got {self.input_size}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"Preprocess: expected in_chans 1 or 3, got {self.in_chans!r}")
        if not len(self.mean) == len(self.std) == self.in_chans:
            raise ValueError(
                f"Preprocess: expected {self.in_chans} values in mean and std (one per channel), "
                f"got mean={self.mean}, std={self.std}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"Preprocess: expected std > 0, got {self.std}")


@dataclass
class Augment:
    """Strength of the contrastive augmentation; colour jitter and greyscale apply to RGB only."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area range of RandomResizedCrop
    hflip: bool = True
    color_jitter: float = 0.4  # brightness/contrast/saturation s, hue s/4, with p=0.8; 0 = off
    grayscale_p: float = 0.2
    blur_p: float = 0.0

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.crop_scale)
        self.crop_scale = (low, high)  # a list when read back from JSON/YAML
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"Augment: expected 0 < crop_scale[0] <= crop_scale[1] <= 1, got {self.crop_scale}"
            )
        if not 0 <= self.color_jitter <= 2:  # hue s/4 must stay within [0, 0.5]
            raise ValueError(f"Augment: expected color_jitter in [0, 2], got {self.color_jitter}")
        for key in ("grayscale_p", "blur_p"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"Augment: expected {key} in [0, 1], got {getattr(self, key)}")


def eval_transform(pre: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic: resize the shorter side to input_size, centre crop, normalise -> [C,H,W]."""
    return v2.Compose(
        [
            _channels(pre),
            v2.Resize(pre.input_size, antialias=True),
            v2.CenterCrop(pre.input_size),
            *_to_tensor(pre),
        ]
    )


def train_transform(pre: Preprocess, aug: Augment) -> Callable[[Image.Image], torch.Tensor]:
    """One random view: crop, flip, colour (RGB only), blur, then normalise -> [C,H,W]."""
    ops: list[Callable[..., object]] = [
        _channels(pre),
        v2.RandomResizedCrop(pre.input_size, scale=aug.crop_scale, antialias=True),
    ]
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if pre.in_chans == 3 and aug.color_jitter > 0:
        s = aug.color_jitter
        ops.append(v2.RandomApply([v2.ColorJitter(s, s, s, s / 4)], p=0.8))
    if pre.in_chans == 3 and aug.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(aug.grayscale_p))  # keeps 3 channels
    if aug.blur_p > 0:
        kernel = max(3, pre.input_size // 10) | 1  # odd, about a tenth of the image as in SimCLR
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=aug.blur_p))
    return v2.Compose([*ops, *_to_tensor(pre)])


class TwoViews:
    """Two independently augmented views of one image: the query and the key of MoCo."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


class TransformedDataset(Dataset[tuple[Views, int, int, int, int]]):
    """Items as tensors and plain ints, ready for the default DataLoader collate.

    Yields (view or views, coarse, fine or -1, id, index); the index lets a training step write
    per-example state (pseudo-labels, memory) back by position.
    """

    def __init__(
        self, dataset: RetrievalDataset, transform: Callable[[Image.Image], Views]
    ) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Views, int, int, int, int]:
        item = self.dataset[index]
        fine = -1 if item.fine is None else item.fine
        return self.transform(item.image), item.coarse, fine, item.id, index


def _channels(pre: Preprocess) -> v2.Transform:
    """Grey images repeat into RGB for 3-channel models; RGB turns grey for 1-channel ones."""
    return v2.RGB() if pre.in_chans == 3 else v2.Grayscale(num_output_channels=1)


def _to_tensor(pre: Preprocess) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
