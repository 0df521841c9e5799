"""Per-data-set embedder defaults: input size, channels, normalisation, a CPU-sized backbone.

These are [design] choices sized for a 2-core CPU; pass a full EmbedderConfig for GPU-sized runs.
"""

from __future__ import annotations

from typing import Any

from .configs import EmbedderConfig, Preprocess

# A narrow ResNet-18 (half the usual widths): small enough to train on a CPU at 28-32 px.
NARROW_RESNET: dict[str, Any] = {
    "backbone": "resnet18",
    "backbone_kwargs": {"channels": [32, 64, 128, 256]},
}

PREPROCESS: dict[str, Preprocess] = {
    "synthetic-patches": Preprocess(32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "fashion-mnist": Preprocess(28, 1, (0.286,), (0.353,)),
    "cifar100": Preprocess(32, 3, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
    "sop": Preprocess(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
IMAGENET = PREPROCESS["sop"]


def model_preset(dataset: str, **overrides: Any) -> EmbedderConfig:
    """The default embedder for a data set (ImageNet statistics at 224 px for unknown ones)."""
    pre = PREPROCESS.get(dataset, IMAGENET)
    base: dict[str, Any] = {"preprocess": pre}
    if pre.input_size <= 64:
        base.update(NARROW_RESNET, head_hidden=256, head_dim=128)
    return EmbedderConfig(**{**base, **overrides})
