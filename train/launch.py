"""DDP on one machine: `launch_training(cfg, out, nproc)` runs `train` in `nproc` processes.

The resolved config travels as a JSON file, so a run launched from Python or from
`coins train --nproc N` is the same run: torchrun starts `python -m coins.train.launch CONFIG
OUT`, and each process reads the file back and calls `train` (which joins the process group
from torchrun's environment).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import TrainConfig


def torchrun_command(
    nproc: int, config_file: str | Path, out: str | Path, resume: bool = False
) -> list[str]:
    """The torchrun command line that trains `config_file` into `out` on `nproc` processes."""
    if nproc < 2:
        raise ValueError(f"nproc must be at least 2 to launch DDP, got {nproc}")
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "coins.train.launch", str(config_file), str(out),
        *(["--resume"] if resume else []),
    ]  # fmt: skip


def launch_training(cfg: TrainConfig, out: str | Path, nproc: int, resume: bool = False) -> int:
    """Train `cfg` into `out` with DDP on `nproc` local processes; torchrun's exit code."""
    with tempfile.TemporaryDirectory(prefix="coins-launch-") as tmp:
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(cfg.to_dict()))
        return subprocess.call(torchrun_command(nproc, config_file, out, resume))


def main(argv: list[str] | None = None) -> int:
    """One torchrun process: read the config file, train, print the metrics on rank 0."""
    parser = argparse.ArgumentParser(prog="python -m coins.train.launch")
    parser.add_argument("config", type=Path, help="JSON file of a resolved TrainConfig")
    parser.add_argument("out", type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    args = parser.parse_args(argv)
    from ..retrieval.evaluate import format_table
    from .loop import train

    cfg = TrainConfig.from_dict(json.loads(args.config.read_text()))
    metrics = train(cfg, args.out, resume=args.resume)
    if metrics:  # rank 0 alone gets them
        print(format_table(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
