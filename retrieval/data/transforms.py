"""From a PIL image to the tensor a model expects, for evaluation and for contrastive training.

`Preprocess` (what the model was trained with) and `Augment` (the strength of the training
augmentation) are plain configs in `coins.retrieval.configs`, readable without torch; this module
turns them into torchvision transforms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..configs import Augment, Preprocess
from .base import RetrievalDataset
from .preprocess import resize_centre_crop

Views = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def eval_transform(pre: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic: resize the shorter side to input_size, centre crop, normalise -> [C,H,W]."""
    resize = ResizeCentreCrop(pre.input_size, interpolation=pre.interpolation)
    return v2.Compose([_channels(pre), resize, *_to_tensor(pre)])


class ResizeCentreCrop:
    """Resize the shorter side to `size`, then crop the centre `size` x `size`.

    PIL images take `resize_centre_crop` (preprocess.py): torchvision's Resize then CenterCrop,
    with a bounded path for thin images, shared with the torch-free `EvalPreprocess`.
    """

    def __init__(
        self, size: int, max_aspect: float = 16.0, interpolation: str = "bilinear"
    ) -> None:
        self.size, self.max_aspect, self.interpolation = size, max_aspect, interpolation
        mode = v2.InterpolationMode(interpolation)
        self.resize = v2.Resize(size, interpolation=mode, antialias=True)
        self.crop = v2.CenterCrop(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):  # tensors: internal callers only, never thin
            return self.crop(self.resize(img))
        return resize_centre_crop(img, self.size, self.max_aspect, self.interpolation)

    def __repr__(self) -> str:
        return f"ResizeCentreCrop(size={self.size}, max_aspect={self.max_aspect})"


def train_transform(pre: Preprocess, aug: Augment) -> Callable[[Image.Image], torch.Tensor]:
    """One random view: crop, flip, colour (RGB only), blur, then normalise -> [C,H,W]."""
    ops: list[Callable[..., object]] = [
        _channels(pre),
        v2.RandomResizedCrop(
            pre.input_size,
            scale=aug.crop_scale,
            interpolation=v2.InterpolationMode(pre.interpolation),
            antialias=True,
        ),
    ]
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if aug.autoaugment:  # on the PIL image, grey or RGB, as MaskCon's CIFAR10Policy
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
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
    """Two independently augmented views of one image: the query and the key of MoCo.

    The key may take a transform of its own (MaskCon: a strong query, a weak key); by default
    both views are drawn from the one transform.
    """

    def __init__(
        self,
        transform: Callable[[Image.Image], torch.Tensor],
        key_transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        self.transform = transform
        self.key_transform = key_transform or transform

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), self.key_transform(img)

    def __repr__(self) -> str:
        if self.key_transform is self.transform:
            return f"TwoViews({self.transform!r})"
        return f"TwoViews(query={self.transform!r}, key={self.key_transform!r})"


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
