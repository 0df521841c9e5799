"""MaskCon (Feng & Patras, CVPR 2023): contrastive learning with a soft target from the key.

Within the query's coarse class, queue entries close to the key k are probably the same fine
class: they share the positive's mass in proportion to their similarity to k, instead of
being pushed away as InfoNCE does or pulled uniformly as Grafit does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ins import check_moco, instance_logits, mix_with_key, same_coarse


@torch.no_grad()
def maskcon_target(
    k: Tensor, queue: Tensor, q_coarse: Tensor, queue_coarse: Tensor, T: float, w: float
) -> Tensor:
    """Soft target N x (1+K), rows summing to 1; no gradient flows through it.

    `a_j = softmax_j(k·queue_j / T)` over same-coarse entries, rescaled so the largest is 1,
    which is `exp((k·queue_j - max k·queue) / T)`; other-coarse and -1 slots get 0, and a row
    with no same-coarse entry gets a = 0 (MaskCon's code gives 0/0 there; its queue is prefilled).
    """
    same = same_coarse(q_coarse, queue_coarse)  # NxK
    s = (k @ queue.T / T).masked_fill(~same, float("-inf"))  # NxK
    s_max = s.max(dim=1, keepdim=True).values  # Nx1, -inf where a row has no same-coarse entry
    s_max = torch.where(same.any(dim=1, keepdim=True), s_max, torch.zeros_like(s_max))  # Nx1
    a = torch.exp(s - s_max)  # NxK, largest same-coarse entry is 1, masked ones 0
    z = torch.cat([torch.ones_like(a[:, :1]), a], dim=1)  # Nx(1+K), 1 on the key
    z = z / z.sum(dim=1, keepdim=True)  # Nx(1+K)
    return mix_with_key(z, w)  # Nx(1+K)


def maskcon_loss(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    q_coarse: Tensor,
    queue_coarse: Tensor,
    T0: float = 0.1,
    T: float = 0.05,
    w: float = 0.5,
) -> Tensor:
    """Cross-entropy of the MoCo logits [q·k, q·queue] / T0 against `maskcon_target`.

    T0: temperature of the contrastive logits (0.1); T: temperature of the key's soft target
    (0.05); w: weight of the soft target against the one-hot instance target (0.5). Defaults
    are MaskCon's. Queue slots labelled -1 stay in the softmax as negatives.
    """
    check_moco(q, k, queue, T0, q_coarse, queue_coarse)
    if T <= 0:
        raise ValueError(f"temperature T must be positive, got {T}")
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight w must lie in [0, 1], got {w}")
    logits = instance_logits(q, k, queue, T0)  # Nx(1+K), unmasked
    y = maskcon_target(k, queue, q_coarse, queue_coarse, T, w)  # Nx(1+K), no grad
    return -(y.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
