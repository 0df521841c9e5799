"""A `coins serve` process in the background: started on a free loopback port, ready once
/readyz answers 200, stopped on request. For benchmarks, tests and scripts that drive the
real server over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    index_dir: str | Path, model: str | Path, *args: str, timeout: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `coins serve INDEX_DIR --model MODEL ARGS...`; return the process and its URL once
    ready. Raises RuntimeError if it exits first, TimeoutError if not ready in `timeout` s."""
    port = free_port()
    cmd = [sys.executable, "-m", "coins.cli", "serve", str(index_dir), "--model", str(model),
           "--port", str(port), "--log-level", "warning", *args]  # fmt: skip
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
    stop_server(proc)
    raise TimeoutError(f"coins serve not ready on {url} after {timeout} s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill after 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
