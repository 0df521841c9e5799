"""`L_ins`: MoCo v2 InfoNCE, and the `coins-imp` variant normalised within the coarse class.

`coins-imp` follows Theorem 2 of the CoIns supplementary: the instance softmax
`Pr{y_i^I | x_i, y_i^C}` runs only over instances of the query's own coarse class, so queue
entries of another coarse class are masked out before the softmax. The positive key (index 0)
is the query's own instance and is never masked, which keeps every row's softmax well defined.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_moco(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    T: float,
    q_coarse: Tensor | None = None,
    queue_coarse: Tensor | None = None,
) -> None:
    """Raise ValueError unless q, k are NxD, queue is KxD, q_coarse is N and queue_coarse K."""
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(
            f"expected q and k both NxD, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if queue.dim() != 2 or queue.shape[0] < 1 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"expected queue Kx{q.shape[1]} with K >= 1, got {tuple(queue.shape)}")
    if T <= 0:
        raise ValueError(f"temperature must be positive, got {T}")
    if (q_coarse is None) != (queue_coarse is None):
        raise ValueError("give both q_coarse and queue_coarse, or neither")
    if q_coarse is None or queue_coarse is None:
        return
    N, K = q.shape[0], queue.shape[0]
    for name, labels, size in (("q_coarse", q_coarse, N), ("queue_coarse", queue_coarse, K)):
        if labels.shape != (size,):
            raise ValueError(f"expected {name} of shape ({size},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"expected integer {name}, got {labels.dtype}")


def same_coarse(q_coarse: Tensor, queue_coarse: Tensor) -> Tensor:
    """NxK bool: queue entry j has query i's coarse label. Slots labelled -1 match nothing."""
    return (q_coarse[:, None] == queue_coarse[None, :]) & (queue_coarse[None, :] >= 0)  # NxK


def instance_logits(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    T: float,
    q_coarse: Tensor | None = None,
    queue_coarse: Tensor | None = None,
) -> Tensor:
    """MoCo logits [q·k, q·queue] / T, N x (1+K), positive at index 0.

    With q_coarse and queue_coarse (`coins-imp`), queue entries of another coarse class and
    empty slots (label -1) are set to -inf: they drop out of the softmax. Only the cross-entropy
    with target 0 (`info_nce`) is meant to read masked logits; a soft target would meet 0 * -inf.
    """
    check_moco(q, k, queue, T, q_coarse, queue_coarse)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # Nx1
    l_neg = q @ queue.T  # NxK
    if q_coarse is not None and queue_coarse is not None:
        l_neg = l_neg.masked_fill(~same_coarse(q_coarse, queue_coarse), float("-inf"))  # NxK
    return torch.cat([l_pos, l_neg], dim=1) / T  # Nx(1+K)


def info_nce(logits: Tensor) -> Tensor:
    """Cross-entropy with the positive at index 0 for every row, mean over the batch."""
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"expected logits Nx(1+K), got {tuple(logits.shape)}")
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # N
    return F.cross_entropy(logits, labels)


def mix_with_key(z: Tensor, w: float) -> Tensor:
    """w * z + (1 - w) * onehot(key): a peer's soft target blended with InfoNCE's."""
    onehot = torch.zeros_like(z)  # Nx(1+K)
    onehot[:, 0] = 1.0
    return w * z + (1 - w) * onehot  # Nx(1+K)
