"""The real server on a tiny real model and index: the session's `tiny_built` (tests/conftest.py:
a one-epoch `coins` run on the tiny synthetic set, exported to ONNX, indexed flat on its test
split)."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

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


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` (`create_app`'s) served by uvicorn in a thread on a free loopback port: its URL once
    the server listens and the service is ready, until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and app.state.service.ready):
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def ready_pids(url: str) -> set[str]:
    """The processes whose `coins_ready` sample is 1, as /metrics sums them."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return set(re.findall(r'^coins_ready\{pid="(\d+)"\} 1\.0$', text, re.M))
