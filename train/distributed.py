"""Process-group plumbing: torchrun/DDP when launched so, a world of one otherwise."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup(device: str) -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); False if alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Rank 0 evaluates while the others wait at their next collective: allow a long wait.
    dist.init_process_group(backend, timeout=timedelta(minutes=60))
    return True


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every rank in rank order (no gradient), as MoCo does for keys."""
    _, size = world()
    if size == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `t` on every rank with rank `src`'s value."""
    if world()[1] > 1:
        dist.broadcast(t, src)
    return t


def all_reduce_mean(value: float) -> float:
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world()[1]
