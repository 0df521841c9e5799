"""Batch-norm groups that keep a query from "seeing" its key through batch statistics.

Under DDP this is MoCo's shuffle-BN: keys are computed on a random permutation of the global
batch split across ranks, so a key's BN statistics come from other samples than its query's.
In one process the same thing happens with `splits` groups: the batch is forwarded in
`splits` chunks (each chunk is its own BN batch), keys on a shuffled order. A run on W ranks
with `splits = s` computes exactly what one process computes with `splits = W * s` (same
permutation, same groups): the DDP test checks this.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import concat_all_gather, world


def grouped_forward(encoder: nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    """encoder(x) with batch-norm statistics computed per chunk of len(x) / splits."""
    if splits <= 1:
        return encoder(x)
    if x.shape[0] % splits != 0:
        raise ValueError(f"batch of {x.shape[0]} does not split into {splits} BN groups")
    return torch.cat([encoder(chunk) for chunk in x.chunk(splits)])


@torch.no_grad()
def shuffled_forward(
    encoder: nn.Module, x: torch.Tensor, splits: int, generator: torch.Generator
) -> torch.Tensor:
    """Keys for this rank's `x`, computed on a shuffled global batch.

    Every rank passes a generator with the same seed, so all draw the same permutation.
    """
    rank, size = world()
    x_all = concat_all_gather(x)  # (W*b)xCxHxW
    perm = torch.randperm(x_all.shape[0], generator=generator).to(x.device)
    local = x_all[perm].chunk(size)[rank]
    k_all = concat_all_gather(grouped_forward(encoder, local, splits))  # (W*b)xD, shuffled order
    k = torch.empty_like(k_all)
    k[perm] = k_all
    return k.chunk(size)[rank]
