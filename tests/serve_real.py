"""A tiny real model and index for the serve tests: a one-epoch `coins` run on the tiny synthetic
set, exported to ONNX and indexed (flat) on its test split; built once per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from train_fixtures import TINY_DATA, tiny_config

from coins.serve.settings import ServeSettings


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
    from coins.serve.build import build_index_from_model
    from coins.serve.export import export_checkpoint
    from coins.train import train

    train(tiny_config(method="coins", epochs=1, amp=False), root / "run")
    export_checkpoint(root / "run" / "checkpoint.pt", root / "model.onnx")
    build_index_from_model(
        root / "model.onnx", root / "index", dataset="synthetic-patches", split="test",
        dataset_options=TINY_DATA, progress=False, index_key="flat",
    )  # fmt: skip
    _BUILT["tiny"] = Built(root / "model.onnx", root / "index")
    return _BUILT["tiny"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(built: Built, *args: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`coins serve` in a subprocess on a free loopback port, once /readyz answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "coins.cli", "serve", str(built.index_dir),
           "--model", str(built.model), "--port", str(port), "--workers", "2", "--threads", "1",
           "--log-level", "warning", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"coins serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise TimeoutError(f"coins serve not ready on {url} after {timeout} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
