"""A run directory as `coins train` writes it, and its one reader.

`config.json` is the resolved training config, `metrics.jsonl` the log (one record per step,
epoch and evaluation; `coins.train.metrics_log`), `eval.json` the final test metrics and
`checkpoint.pt` the model. Whatever reads a run (reports, benchmarks) goes through `read_run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coins.train.metrics_log import read_log

CONFIG = "config.json"
LOG = "metrics.jsonl"
EVAL = "eval.json"
CHECKPOINT = "checkpoint.pt"
REQUIRED = (CONFIG, CHECKPOINT)


@dataclass(frozen=True)
class Run:
    """What a run directory holds: its resolved config, its log and its final metrics."""

    path: Path
    name: str
    config: dict[str, Any]
    log: list[dict[str, Any]]  # metrics.jsonl; empty when the run has none
    metrics: dict[str, Any] | None  # eval.json; None when the run has none


def read_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run directory (named `name`, else by its folder); a missing config or
    checkpoint is a FileNotFoundError naming what a run directory holds."""
    path = Path(path)
    for file in REQUIRED:
        if not (path / file).is_file():
            raise FileNotFoundError(
                f"run directory {path}: no {file}; expected a directory written by coins train"
            )
    log = read_log(path / LOG) if (path / LOG).is_file() else []
    metrics = json.loads((path / EVAL).read_text()) if (path / EVAL).is_file() else None
    config = json.loads((path / CONFIG).read_text())
    return Run(path, name or path.name, config, log, metrics)
