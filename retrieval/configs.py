"""The typed configs of an embedder and of its inputs, read back from plain dicts.

`Preprocess` is what the model was trained with (size, channels, normalisation): it is saved in
every checkpoint and exported model so that the same images give the same embeddings later.
`Augment` is only the strength of the training augmentation (two views per image, as in MoCo).
`EmbedderConfig` rebuilds the embedder. They are plain dataclasses without torch, so that the
command line reads, checks and explains them in a fraction of a second; unknown keys fail loudly.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

SMALL_IMAGE_MAX = 64  # inputs of this size or less get the small-image stem
INTERPOLATIONS = ("bilinear", "bicubic")  # resampling filters of Preprocess (timm's names)


def near_matches(key: str, known: Iterable[str]) -> str:
    """'; did you mean a or b?' for the known names close to `key`, or ''."""
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def check_fields(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise ValueError naming the keys of `d` that are not fields of dataclass `cls`."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        hint = near_matches(unknown[0], known) if len(unknown) == 1 else ""
        raise ValueError(f"unknown {what} {unknown}{hint or f'; expected some of {sorted(known)}'}")


def parse_pairs(pairs: Iterable[str], flag: str) -> dict[str, Any]:
    """`KEY=VALUE` strings as {key: YAML value}; dashes in keys become underscores.

    Later pairs win; a repeated key moves to the end, so the order is the order of last use.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag}: expected KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not YAML"
            raise ValueError(
                f"{flag} {key}: expected a YAML value, got {text!r} ({problem})"
            ) from e
        key = key.replace("-", "_")
        out.pop(key, None)
        out[key] = value
    return out


@dataclass
class Preprocess:
    """What the model expects: square `input_size` images of `in_chans` (1 or 3) channels,
    normalised per channel by `mean` and `std` after scaling to [0, 1]."""

    input_size: int = 32  # side of the square model input, pixels
    in_chans: int = 3  # 1 (grey) or 3 (RGB)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # per channel, after scaling to [0, 1]
    std: tuple[float, ...] = (0.25, 0.25, 0.25)  # per channel
    interpolation: str = "bilinear"  # resampling of every resize: bilinear | bicubic

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
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Preprocess: expected interpolation {' or '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )


@dataclass
class Augment:
    """Strength of the contrastive augmentation; colour jitter and greyscale apply to RGB only."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # area range of RandomResizedCrop
    hflip: bool = True  # random horizontal flip
    color_jitter: float = 0.4  # brightness/contrast/saturation s, hue s/4, with p=0.8; 0 = off
    grayscale_p: float = 0.2  # probability of a grey view (RGB only)
    blur_p: float = 0.0  # probability of a Gaussian blur
    autoaugment: bool = False  # AutoAugment's CIFAR-10 policy after crop and flip (MaskCon)

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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Augment:
        check_fields(cls, d, "augment keys")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)


@dataclass
class EmbedderConfig:
    """Everything needed to rebuild an embedder; stored in every checkpoint and export."""

    backbone: str = "resnet18"  # any timm model name (created with num_classes=0)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"channels": [32, ...]}
    small_stem: bool | None = None  # 3x3 stride-1 stem, no max-pool; None: input_size <= 64
    head_hidden: int = 512  # MLP hidden width; 0 gives a linear head
    head_dim: int = 128  # projection output dimension
    weights: str | None = None  # local file of backbone weights; never a download
    # timm's loader; the preprocessing comes from the weights' config unless set
    pretrained: str | None = None  # timm name.tag (hub, cached) or a .safetensors/.pth file
    preprocess: Preprocess = field(default_factory=Preprocess)  # what the model expects

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedderConfig:
        check_fields(cls, d, "model config keys")
        d = dict(d)
        pre = d.pop("preprocess", {})
        if isinstance(pre, dict):
            check_fields(Preprocess, pre, "preprocess keys")
            fields: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()
            }
            pre = Preprocess(**fields)
        return cls(preprocess=pre, **d)

    @property
    def uses_small_stem(self) -> bool:
        if self.small_stem is None:
            return self.preprocess.input_size <= SMALL_IMAGE_MAX
        return self.small_stem
