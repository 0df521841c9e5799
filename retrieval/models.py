"""The embedder: a timm backbone (pooled features) plus an MLP projection head.

The evaluated embedding is the L2-normalised pooled backbone feature (as in the authors' code);
the normalised head output (the space the losses live in) can be selected instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .configs import check_fields
from .data.transforms import Preprocess

Which = Literal["backbone", "head"]
SMALL_IMAGE_MAX = 64  # inputs of this size or less get the small-image stem


@dataclass
class EmbedderConfig:
    """Everything needed to rebuild an embedder; stored in every checkpoint and export."""

    backbone: str = "resnet18"  # any timm model name (created with num_classes=0)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"channels": [32, ...]}
    small_stem: bool | None = None  # 3x3 stride-1 stem, no max-pool; None: input_size <= 64
    head_hidden: int = 512  # MLP hidden width; 0 gives a linear head
    head_dim: int = 128  # projection output dimension
    weights: str | None = None  # local file of backbone weights; never a download
    preprocess: Preprocess = field(default_factory=Preprocess)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedderConfig:
        check_fields(cls, d, "model config keys")
        d = dict(d)
        pre = d.pop("preprocess", {})
        if isinstance(pre, dict):
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


def _use_small_stem(backbone: nn.Module, in_chans: int) -> None:
    """Replace a ResNet-family stem by a 3x3 stride-1 convolution without max-pool."""
    conv1, bn1 = getattr(backbone, "conv1", None), getattr(backbone, "bn1", None)
    if conv1 is None or not isinstance(bn1, nn.BatchNorm2d) or not hasattr(backbone, "maxpool"):
        raise ValueError(
            f"small_stem needs a ResNet-family backbone (conv1, bn1, maxpool); "
            f"got {type(backbone).__name__}: set small_stem=False or pick a resnet"
        )
    backbone.conv1 = nn.Conv2d(in_chans, bn1.num_features, 3, stride=1, padding=1, bias=False)
    backbone.maxpool = nn.Identity()


def _load_backbone_weights(backbone: nn.Module, path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"backbone weights {file}: expected a local .pth/.safetensors file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = load_file(str(file))
    else:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = sorted(set(own) - set(usable))
    if missing:
        raise ValueError(
            f"backbone weights {file} lack {len(missing)} tensors of {len(own)} "
            f"(first: {missing[:3]}); expected weights of the same timm architecture"
        )
    backbone.load_state_dict(usable)


def projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """MoCo v2 MLP head: Linear-ReLU-Linear (a linear layer when hidden == 0)."""
    if hidden == 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


class Embedder(nn.Module):
    """Backbone f(x) and projection head g; `forward` gives q = normalize(g(f(x)))."""

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        self.config = config
        in_chans = config.preprocess.in_chans
        self.backbone = timm.create_model(
            config.backbone,
            pretrained=False,
            num_classes=0,
            in_chans=in_chans,
            **config.backbone_kwargs,
        )
        if config.uses_small_stem:
            _use_small_stem(self.backbone, in_chans)
        if config.weights:
            _load_backbone_weights(self.backbone, config.weights)
        self.num_features = int(self.backbone.num_features)  # type: ignore[arg-type]
        self.head = projection_head(self.num_features, config.head_hidden, config.head_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # BxF pooled, not normalised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)  # Bxhead_dim

    def embed(self, x: torch.Tensor, which: Which = "backbone") -> torch.Tensor:
        """L2-normalised embedding of a batch: the pooled backbone feature or the head output."""
        if which == "head":
            return self(x)
        if which == "backbone":
            return F.normalize(self.features(x), dim=1)
        raise ValueError(f"which must be 'backbone' or 'head', got {which!r}")

    def embedding_dim(self, which: Which = "backbone") -> int:
        return self.config.head_dim if which == "head" else self.num_features
