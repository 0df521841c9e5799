"""A tiny real model and index for the serve tests: a one-epoch `coins` run on the tiny synthetic
set, exported to ONNX and indexed (flat) on its test split; built once per test session."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from train_fixtures import TINY_DATA, tiny_config

from coins.serve.api.settings import ServeSettings
from coins.serve.client import background


@dataclass(frozen=True)
class Built:
    model: Path
    index_dir: Path

    def settings(self, **overrides: object) -> ServeSettings:
        base = {"index_dir": self.index_dir, "model": self.model, "workers": 2, "threads": 1}
        return ServeSettings(**{**base, **overrides})  # type: ignore[arg-type]


_BUILT: dict[str, Built] = {}


def build_real(root: Path) -> Built:
    """Train, export, index into `root` (the first call of the session; later calls reuse it)."""
    if "tiny" in _BUILT:
        return _BUILT["tiny"]
    from coins.retrieval.onnx.export import export_checkpoint
    from coins.serve.index.build import build_index_from_model
    from coins.train import train

    train(tiny_config(method="coins", epochs=1, amp=False), root / "run")
    export_checkpoint(root / "run" / "checkpoint.pt", root / "model.onnx")
    build_index_from_model(
        root / "model.onnx", root / "index", dataset="synthetic-patches", split="test",
        dataset_options=TINY_DATA, progress=False, index_key="flat",
    )  # fmt: skip
    _BUILT["tiny"] = Built(root / "model.onnx", root / "index")
    return _BUILT["tiny"]


def start_server(built: Built, *args: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """The real server on `built`, 2 search workers and 1 FAISS thread unless ARGS say more."""
    return background.start_server(
        built.index_dir, built.model, "--workers", "2", "--threads", "1", *args, timeout=timeout
    )


stop_server = background.stop_server
free_port = background.free_port
