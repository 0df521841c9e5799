"""`coins serve` never imports torch or torchvision (each server process saves hundreds of MiB):
the imports, a real model and index searched by image, a thumbnail, and a real server's
processes, each checked in a fresh process."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_real import Built, ready_pids, start_server, stop_server

NO_TORCH = """
import sys
loaded = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
assert not loaded, f"loaded {loaded}"
"""


def run_fresh(code: str, timeout: float = 120) -> str:
    """Run `code` in a new interpreter, then check it never imported torch; its stdout."""
    script = textwrap.dedent(code) + NO_TORCH
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_serve_imports_no_torch() -> None:
    run_fresh("""
        import coins.cli, coins.retrieval.data, coins.retrieval.onnx.runner
        import coins.serve.api.app, coins.serve.api.processes, coins.serve.api.settings
    """)


def test_a_real_image_search_and_thumbnail_import_no_torch(tiny_built: Built) -> None:
    run_fresh(f"""
        import io, time
        import numpy as np
        from fastapi.testclient import TestClient
        from PIL import Image
        from coins.serve.api.app import create_app
        from coins.serve.api.settings import ServeSettings

        settings = ServeSettings(
            index_dir={str(tiny_built.index_dir)!r}, model={str(tiny_built.model)!r},
            workers=2, threads=1,
        )
        rng = np.random.default_rng(0)
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(png, "PNG")
        with TestClient(create_app(settings)) as client:
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.02)
            files = [("images", ("a.png", png.getvalue(), "image/png"))]
            r = client.post("/v1/search/image", files=files, data={{"k": "3"}})
            assert r.status_code == 200, r.text
            top = r.json()["results"][0]["neighbors"][0]["id"]
            thumb = client.get(f"/v1/items/{{top}}/image")  # the data set, built again
            assert thumb.status_code == 200 and thumb.content[:4] == b"\\x89PNG"
    """)


def mapped_torch(pid: int) -> list[str]:
    """The torch libraries mapped into process `pid`."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted(set(re.findall(r"\S*lib(?:torch|c10)\S*\.so\S*", maps)))


@pytest.mark.slow  # ~6 s: a real two-process server
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
def test_server_processes_map_no_torch(tiny_built: Built) -> None:
    proc, url = start_server(tiny_built, "--processes", "2", "--mmap", timeout=120)
    try:
        pids: set[str] = set()
        deadline = time.monotonic() + 120
        while len(pids) < 2:  # /readyz answers for whichever process took it
            assert time.monotonic() < deadline, "the second process never became ready"
            pids = ready_pids(url)
            time.sleep(0.2)
        png = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 10, 90)).save(png, "PNG")
        for _ in range(8):  # a new connection each: the kernel picks the process
            files = [("images", ("a.png", png.getvalue(), "image/png"))]
            assert httpx.post(f"{url}/v1/search/image", files=files).status_code == 200
        for pid in [proc.pid, *map(int, pids)]:
            assert mapped_torch(pid) == [], pid
    finally:
        stop_server(proc)
