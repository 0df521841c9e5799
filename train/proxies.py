"""Instance proxies for `coinsp`: a memory bank of per-example vectors clustered into P proxies.

The instance classifier has one vector per training example; we keep it as a memory bank of
normalised keys, updated with momentum when the example is seen ([design]). k-means (FAISS)
groups the bank into P clusters; the normalised cluster means are the proxies and each
example's cluster is its pseudo-label (supplementary 2.3).
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def proxies_per_class(coarse: np.ndarray, P: int) -> dict[int, int]:
    """Split P proxies across coarse classes in proportion to their size (at least 1 each)."""
    classes, counts = np.unique(coarse, return_counts=True)
    share = np.maximum(1, np.round(P * counts / counts.sum())).astype(int)
    return {int(c): int(min(s, n)) for c, s, n in zip(classes, share, counts, strict=True)}


def kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centroids kxD, assignment of each row) by FAISS k-means on the sphere."""
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    assert km.centroids is not None
    return km.centroids, assign[:, 0]


class InstanceProxies(nn.Module):
    """Memory bank (NxD), proxies (PxD) and pseudo-labels (N, -1 before the first clustering).

    Args:
        coarse: coarse label of every training example (used when clustering per coarse class).
        dim: vector dimension D.
        P: number of proxies (about N / 5 suits the paper's CIFAR-100 ablation).
        per_coarse: cluster inside each coarse class so a proxy never mixes coarse classes.
        momentum: bank update v <- normalize(momentum * v + (1 - momentum) * key).
    """

    bank: torch.Tensor
    proxies: torch.Tensor
    pseudo: torch.Tensor

    def __init__(
        self, coarse: np.ndarray, dim: int, P: int, per_coarse: bool = True, momentum: float = 0.5
    ) -> None:
        super().__init__()
        n = len(coarse)
        if not 1 <= P <= n:
            raise ValueError(f"proxies P={P} must lie in [1, {n}] (the number of examples)")
        self.coarse = np.asarray(coarse)
        self.per_coarse = per_coarse
        self.momentum = momentum
        self.split = proxies_per_class(self.coarse, P) if per_coarse else {-1: P}
        self.register_buffer("bank", F.normalize(torch.randn(n, dim), dim=1))  # NxD
        self.register_buffer("proxies", torch.zeros(sum(self.split.values()), dim))  # PxD
        self.register_buffer("pseudo", torch.full((n,), -1, dtype=torch.long))  # N

    @torch.no_grad()
    def update(self, index: torch.Tensor, keys: torch.Tensor) -> None:
        """Move the bank entries of the seen examples towards their new keys."""
        b = self.momentum
        self.bank[index] = F.normalize(b * self.bank[index] + (1 - b) * keys.to(self.bank), dim=1)

    @torch.no_grad()
    def recluster(self, seed: int) -> None:
        """k-means the bank into the proxies and reassign every pseudo-label."""
        bank = self.bank.cpu().float().numpy()
        offset = 0
        for c, k in self.split.items():
            rows = np.arange(len(bank)) if c == -1 else np.flatnonzero(self.coarse == c)
            centroids, assign = kmeans(np.ascontiguousarray(bank[rows]), k, seed + offset)
            # k-means runs on the CPU; the buffers may live on the GPU
            self.proxies[offset : offset + k] = torch.from_numpy(centroids).to(self.proxies)
            rows_t = torch.from_numpy(rows).to(self.pseudo.device)
            self.pseudo[rows_t] = torch.from_numpy(assign + offset).to(self.pseudo)
            offset += k
