"""The embedder: a timm backbone (pooled features) plus an MLP projection head.

The evaluated embedding is the L2-normalised pooled backbone feature (as in the authors' code);
the normalised head output (the space the losses live in) can be selected instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

# the configs live without torch (the CLI reads them); imported here for the old import paths
from .atomic import file_sha256
from .configs import SMALL_IMAGE_MAX, EmbedderConfig, Preprocess
from .pretrained import WeightsOrigin, load_pretrained, timm_overlay

Which = Literal["backbone", "head"]


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


def create_backbone(config: EmbedderConfig) -> nn.Module:
    """timm's `create_model(backbone, num_classes=0, **backbone_kwargs)`, its weights not loaded
    (`Embedder` loads `pretrained` after replacing the stem; a hub name's tag picks timm's
    pretrained config, a file comes as `pretrained_cfg_overlay=dict(file=...)`).

    backbone_kwargs are free-form (each timm model takes its own), so timm is the one to judge
    them: what it rejects comes back as a ValueError naming the config keys, not a traceback.
    """
    name, overlay = config.backbone, timm_overlay(config)
    if config.pretrained and overlay is None:  # a hub name: its tag chooses timm's config
        name = config.pretrained
    kwargs = dict(config.backbone_kwargs)
    if overlay is not None:
        kwargs["pretrained_cfg_overlay"] = overlay
    try:
        return timm.create_model(
            name,
            pretrained=False,
            num_classes=0,
            in_chans=config.preprocess.in_chans,
            **kwargs,
        )
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"model.backbone {config.backbone!r} with model.backbone_kwargs "
            f"{config.backbone_kwargs}: timm refused them ({type(e).__name__}: {e}); "
            f"expected a timm model name and keyword arguments it accepts"
        ) from e


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
        if config.pretrained and config.weights:
            raise ValueError(
                f"model.pretrained {config.pretrained!r} and model.weights {config.weights!r}: "
                "expected one source of initial weights, not both"
            )
        self.backbone = create_backbone(config)
        replaced = []
        if config.uses_small_stem:
            _use_small_stem(self.backbone, in_chans)
            replaced = ["conv1"]
        # where the initial weights came from; saved in checkpoints, exports and indexes
        self.weights_origin: WeightsOrigin | None = None
        if config.weights:
            _load_backbone_weights(self.backbone, config.weights)
            file = config.weights
            self.weights_origin = WeightsOrigin(file, file, file_sha256(file))
        if config.pretrained:
            self.weights_origin = load_pretrained(self.backbone, config, replaced)
        self.num_features = int(self.backbone.num_features)  # type: ignore[arg-type]
        self.head = projection_head(self.num_features, config.head_hidden, config.head_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # BxF pooled, not normalised

    def project(self, f: torch.Tensor) -> torch.Tensor:
        """q = normalize(g(f)) of pooled features f (BxF); g has no batch norm, so any batch."""
        return F.normalize(self.head(f), dim=1)  # Bxhead_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(x))

    def embed(self, x: torch.Tensor, which: Which = "backbone") -> torch.Tensor:
        """L2-normalised embedding of a batch: the pooled backbone feature or the head output."""
        if which == "head":
            return self(x)
        if which == "backbone":
            return F.normalize(self.features(x), dim=1)
        raise ValueError(f"which must be 'backbone' or 'head', got {which!r}")

    def embedding_dim(self, which: Which = "backbone") -> int:
        return self.config.head_dim if which == "head" else self.num_features


__all__ = [
    "SMALL_IMAGE_MAX",
    "Embedder",
    "EmbedderConfig",
    "Preprocess",
    "Which",
    "create_backbone",
    "projection_head",
]
