"""Grafit (Touvron et al., ICCV 2021) as re-implemented by MaskCon (CVPR 2023).

A supervised-contrastive term on the MoCo queue pulls q towards every queued key of its coarse
class, and an InfoNCE term keeps instances apart; both read the same logits [q·k, q·queue] / T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ins import check_moco, instance_logits, mix_with_key, same_coarse


def grafit_target(q_coarse: Tensor, queue_coarse: Tensor, w: float) -> Tensor:
    """Soft target N x (1+K): w * SupCon (uniform over the key and same-coarse entries)
    + (1 - w) * one-hot on the key. Rows sum to 1."""
    same = same_coarse(q_coarse, queue_coarse).double()  # NxK
    z = torch.cat([torch.ones_like(same[:, :1]), same], dim=1)  # Nx(1+K), 1 on key and same-coarse
    z = z / z.sum(dim=1, keepdim=True)  # Nx(1+K), SupCon's uniform target
    return mix_with_key(z, w)  # Nx(1+K)


def grafit_loss(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    q_coarse: Tensor,
    queue_coarse: Tensor,
    T: float,
    w: float = 0.5,
) -> Tensor:
    """w * SupCon_queue + (1 - w) * InfoNCE, mean over the batch.

    Both terms are cross-entropies on the same logits, so their weighted sum is a single
    cross-entropy against the mixed target `grafit_target`. Queue slots labelled -1 count as
    negatives for both terms (they are never positives).
    """
    check_moco(q, k, queue, T, q_coarse, queue_coarse)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight w must lie in [0, 1], got {w}")
    logits = instance_logits(q, k, queue, T)  # Nx(1+K), unmasked
    y = grafit_target(q_coarse, queue_coarse, w).to(logits.dtype)  # Nx(1+K)
    return -(y * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
