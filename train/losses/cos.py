"""`L_cos`: the cosine classifier on the coarse label (`opt` uses it with fine labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cos_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the cosine logits against the class labels, mean over the batch."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits NxC and target N, got logits {tuple(logits.shape)} "
            f"and target {tuple(target.shape)}"
        )
    return F.cross_entropy(logits, target)


class CosineClassifier(nn.Module):
    """Class weights on the unit sphere, so the logits are cosines sharpened by T.

    Normalising the weights (not only q) keeps every class on the same scale as the instance
    loss, which is what lets `L_ins + alpha * L_cos` share one temperature [code].
    """

    cos_loss = staticmethod(cos_loss)  # the same function, reachable from the classifier

    def __init__(self, dim: int, num_classes: int, T: float = 0.2) -> None:
        """
        dim: feature dimension D of q (the projection output)
        num_classes: C, one weight vector per class
        T: softmax temperature (default 0.2, the released CoIns value, shared with L_ins)
        """
        super().__init__()
        if dim <= 0 or num_classes <= 0:
            raise ValueError(f"dim and num_classes must be positive, got {dim}, {num_classes}")
        if T <= 0:
            raise ValueError(f"temperature T must be positive, got {T}")
        self.dim = dim
        self.num_classes = num_classes
        self.T = T
        self.weight = nn.Parameter(torch.empty(num_classes, dim))  # CxD
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, q: Tensor) -> Tensor:
        """Cosine logits NxC of L2-normalised queries q NxD."""
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected q Nx{self.dim}, got {tuple(q.shape)}")
        w = F.normalize(self.weight, dim=1)  # CxD, renormalised at every forward
        return q @ w.T / self.T  # NxC

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, T={self.T}"
