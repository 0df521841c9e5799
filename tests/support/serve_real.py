"""The real server on a tiny real model and index: the session's `tiny_built` (tests/conftest.py:
a one-epoch `coins` run on the tiny synthetic set, exported to ONNX, indexed flat on its test
split)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from coins.serve.api.settings import ServeSettings
from coins.serve.client import background


@dataclass(frozen=True)
class Built:
    model: Path
    index_dir: Path

    def settings(self, **overrides: object) -> ServeSettings:
        base = {"index_dir": self.index_dir, "model": self.model, "workers": 2, "threads": 1}
        return ServeSettings(**{**base, **overrides})  # type: ignore[arg-type]


def start_server(built: Built, *args: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """The real server on `built`, 2 search workers and 1 FAISS thread unless ARGS say more."""
    return background.start_server(
        built.index_dir, built.model, "--workers", "2", "--threads", "1", *args, timeout=timeout
    )


stop_server = background.stop_server
free_port = background.free_port


def ready_pids(url: str) -> set[str]:
    """The processes whose `coins_ready` sample is 1, as /metrics sums them."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return set(re.findall(r'^coins_ready\{pid="(\d+)"\} 1\.0$', text, re.M))
