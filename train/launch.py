"""`coins train --nproc N`: re-run the same command under torchrun with N processes."""

from __future__ import annotations

import subprocess
import sys


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """The torchrun command line that runs `coins train TRAIN_ARGS` on `nproc` local processes."""
    if nproc < 2:
        raise ValueError(f"--nproc must be at least 2 to launch DDP, got {nproc}")
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "coins.cli", "train", *train_args,
    ]  # fmt: skip


def launch(nproc: int, train_args: list[str]) -> int:
    """Run DDP training in child processes; returns torchrun's exit code."""
    return subprocess.call(torchrun_command(nproc, train_args))
