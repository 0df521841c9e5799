"""`L_proxy` of `coinsp` (CoIns supplementary 2.3): classify q into its instance cluster.

The proxies are k-means means of the memory bank of instance vectors; pulling q towards its
cluster's proxy groups near-identical instances, which instance discrimination alone keeps apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def proxy_loss(q: Tensor, proxies: Tensor, pseudo_labels: Tensor, T_P: float) -> Tensor:
    """Cross-entropy of q · normalize(proxies) / T_P against the pseudo-labels.

    q: NxD, L2-normalised; proxies: PxD, normalised here (cluster means are not unit vectors);
    pseudo_labels: N cluster ids in [0, P), or -1 for an example not yet assigned, which is
    ignored. With no assigned example the loss is a zero still connected to q's graph.
    """
    if q.dim() != 2 or proxies.dim() != 2 or proxies.shape[1] != q.shape[1]:
        raise ValueError(
            f"expected q NxD and proxies PxD, got q {tuple(q.shape)} "
            f"and proxies {tuple(proxies.shape)}"
        )
    if pseudo_labels.shape != q.shape[:1]:
        raise ValueError(
            f"expected pseudo_labels of shape ({q.shape[0]},), got {tuple(pseudo_labels.shape)}"
        )
    if pseudo_labels.is_floating_point() or pseudo_labels.is_complex():
        raise ValueError(f"expected integer pseudo_labels, got {pseudo_labels.dtype}")
    if T_P <= 0:
        raise ValueError(f"temperature T_P must be positive, got {T_P}")
    if pseudo_labels.numel() == 0:
        return q.sum() * 0.0
    lo, hi = torch.stack(torch.aminmax(pseudo_labels)).tolist()  # one host sync
    if lo < -1 or hi >= proxies.shape[0]:
        raise ValueError(f"pseudo_labels must lie in [-1, {proxies.shape[0]}), got [{lo}, {hi}]")
    if hi < 0:  # nobody assigned yet: cross-entropy would be 0/0
        return q.sum() * 0.0
    logits = q @ F.normalize(proxies, dim=1).T / T_P  # NxP
    return F.cross_entropy(logits, pseudo_labels.long(), ignore_index=-1)
