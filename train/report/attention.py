"""Activation-based spatial attention (Zagoruyko & Komodakis, ICLR 2017) and where its mass lies.

The attention map of a backbone stage is the mean over channels of the squared activations,
A = mean_c F_c^2 [B,h,w]. It is upsampled bilinearly to the image (cell centres on pixel
centres, `align_corners=False`) and normalised to sum 1 per image, so the mass inside a box is
the share of the stage's attention that falls on it. On synthetic-patches the boxes of the big
(coarse) and the small (fine) patch are known: the supplementary's Figure 2, measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from coins.retrieval.data import DatasetError, RetrievalDataset, TransformedDataset, eval_transform
from coins.retrieval.models import Embedder

PATCHES = ("big", "small")  # synthetic-patches: boxes[:, 0] is the big patch, [:, 1] the small


def stage_names(model: Embedder) -> list[str]:
    """The backbone's stages, stem first (timm `feature_info` module names)."""
    info = getattr(model.backbone, "feature_info", None)
    if info is None or not hasattr(model.backbone, "forward_intermediates"):
        raise ValueError(
            f"backbone {model.config.backbone!r} has no feature_info/forward_intermediates; "
            "expected a timm model that returns its intermediate feature maps"
        )
    return [str(stage["module"]) for stage in info]


def resolve_stage(model: Embedder, stage: int) -> int:
    """The index of `stage` among `stage_names(model)`; negative counts from the last."""
    names = stage_names(model)
    if not -len(names) <= stage < len(names):
        raise ValueError(
            f"stage {stage} out of range: the backbone has {len(names)} stages {names}; "
            f"expected -{len(names)} <= stage < {len(names)}"
        )
    return stage % len(names)


def stage_name(model: Embedder, stage: int) -> str:
    """The module name of `stage` (e.g. -1 -> "layer4" on a ResNet)."""
    return stage_names(model)[resolve_stage(model, stage)]


def stage_features(model: Embedder, x: torch.Tensor, stage: int = -1) -> torch.Tensor:
    """The activations of one backbone stage for a batch x [B,C,H,W]: [B,C',h,w]."""
    index = resolve_stage(model, stage)
    (features,) = model.backbone.forward_intermediates(  # type: ignore[operator]
        x, indices=[index], intermediates_only=True
    )
    return features


def spatial_attention(features: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the squared activations: [B,C,h,w] -> [B,h,w]."""
    if features.ndim != 4:
        raise ValueError(f"expected feature maps [B,C,h,w], got shape {tuple(features.shape)}")
    return features.float().pow(2).mean(dim=1)


def upsample_normalised(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [B,h,w] maps to size (H, W), each then scaled to sum 1."""
    maps = F.interpolate(attention[:, None], size=size, mode="bilinear", align_corners=False)
    maps = maps[:, 0]  # [B,H,W]; bilinear weights are >= 0, so the maps stay >= 0
    total = maps.sum(dim=(1, 2), keepdim=True)  # [B,1,1]
    if (total <= 0).any():
        raise ValueError("an attention map sums to 0 (all activations of the stage are zero)")
    return maps / total


@torch.no_grad()
def attention_maps(
    model: Embedder, x: torch.Tensor, stage: int = -1, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Normalised attention maps [B,H,W] of a batch x [B,C,H0,W0]; size (H, W) defaults to x's."""
    was_training = model.training
    model.eval()
    try:
        attention = spatial_attention(stage_features(model, x, stage))  # [B,h,w]
    finally:
        model.train(was_training)
    return upsample_normalised(attention, size or (x.shape[-2], x.shape[-1]))


def box_mass(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mass of each map [N,H,W] inside its box [N,4] = (x0, y0, x1, y1), end exclusive: [N]."""
    maps, boxes = np.asarray(maps), np.asarray(boxes)
    if maps.ndim != 3 or boxes.shape != (len(maps), 4):
        raise ValueError(f"expected maps [N,H,W] and boxes [N,4], got {maps.shape}, {boxes.shape}")
    height, width = maps.shape[1:]
    x0, x1 = np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 2], 0, width)
    y0, y1 = np.clip(boxes[:, 1], 0, height), np.clip(boxes[:, 3], 0, height)
    # x indexes columns and y rows, as synthetic.py paints image[y0:y1, x0:x1]
    cols, rows = np.arange(width), np.arange(height)
    inside_x = (cols >= x0[:, None]) & (cols < x1[:, None])  # [N,W]
    inside_y = (rows >= y0[:, None]) & (rows < y1[:, None])  # [N,H]
    inside = inside_y[:, :, None] & inside_x[:, None, :]  # [N,H,W]
    return (maps * inside).sum(axis=(1, 2))


def square_image_size(dataset: RetrievalDataset) -> int:
    """The side of the data set's images, which must be square (boxes live in their pixels)."""
    width, height = dataset.image(0).size
    if width != height:
        raise DatasetError(
            f"{dataset.name}/{dataset.split}: images of {width}x{height}; the attention mass "
            "needs square images, where the model's resize keeps box coordinates exact"
        )
    return width


@torch.no_grad()
def dataset_attention(
    model: Embedder,
    dataset: RetrievalDataset,
    stage: int = -1,
    size: int | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Normalised maps [N,S,S] float32 of `indices` (default: all), upsampled to side `size`
    (default: the model's input size)."""
    side = size or model.config.preprocess.input_size
    items = TransformedDataset(dataset, eval_transform(model.config.preprocess))
    subset = items if indices is None else torch.utils.data.Subset(items, list(indices))
    model.to(device)
    chunks = []
    for images, *_ in DataLoader(subset, batch_size=batch_size, shuffle=False):
        maps = attention_maps(model, images.to(device), stage, (side, side))
        chunks.append(maps.cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def patch_mass(
    model: Embedder,
    dataset: RetrievalDataset,
    stage: int = -1,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean share of attention inside the big and the small patch box over a synthetic split."""
    boxes = patch_boxes(dataset)  # [N,2,4]
    maps = dataset_attention(
        model, dataset, stage, size=square_image_size(dataset), batch_size=batch_size, device=device
    )
    return {name: float(box_mass(maps, boxes[:, j]).mean()) for j, name in enumerate(PATCHES)}


def patch_area(dataset: RetrievalDataset) -> dict[str, float]:
    """Mean share of the image area covered by each patch box: the mass of a uniform map."""
    boxes = patch_boxes(dataset)
    side = square_image_size(dataset)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # [N,2]
    return {name: float(area[:, j].mean() / side**2) for j, name in enumerate(PATCHES)}


def patch_boxes(dataset: RetrievalDataset) -> np.ndarray:
    """The [N,2,4] (big, small) boxes of a synthetic-patches split; a clear error elsewhere."""
    boxes = getattr(dataset, "boxes", None)
    if boxes is None:
        raise DatasetError(
            f"{dataset.name}/{dataset.split} keeps no patch boxes; the attention mass (--measure) "
            "needs synthetic-patches, whose `boxes` locate the big and the small patch"
        )
    boxes = np.asarray(boxes)
    if boxes.shape != (len(dataset), len(PATCHES), 4):
        raise DatasetError(
            f"{dataset.name}/{dataset.split}: boxes of shape {boxes.shape}; "
            f"expected [{len(dataset)}, {len(PATCHES)}, 4]"
        )
    return boxes
