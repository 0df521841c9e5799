"""MoCo's FIFO queue of keys, which also keeps each key's coarse label and sample index."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyQueue(nn.Module):
    """The last K keys (negatives), their coarse labels (-1: not yet filled) and sample indices.

    Args:
        dim: key dimension D.
        K: queue length (65536 on ImageNet; 4096-16384 suits small sets).
    """

    queue: torch.Tensor
    coarse: torch.Tensor
    index: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, dim: int, K: int) -> None:
        super().__init__()
        self.K = K
        # Random unit vectors until real keys arrive, as in MoCo; labels -1 match no query.
        self.register_buffer("queue", F.normalize(torch.randn(K, dim), dim=1))  # KxD
        self.register_buffer("coarse", torch.full((K,), -1, dtype=torch.long))  # K
        self.register_buffer("index", torch.full((K,), -1, dtype=torch.long))  # K
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, coarse: torch.Tensor, index: torch.Tensor) -> None:
        """Replace the oldest len(keys) entries; K must be a multiple of the (global) batch."""
        n = keys.shape[0]
        if self.K % n != 0:
            raise ValueError(
                f"queue size K={self.K} must be a multiple of the global batch size {n} "
                f"(batch_size x processes); pick K as a multiple of it"
            )
        p = int(self.ptr)
        self.queue[p : p + n] = keys.to(self.queue.dtype)
        self.coarse[p : p + n] = coarse
        self.index[p : p + n] = index
        self.ptr.fill_((p + n) % self.K)
