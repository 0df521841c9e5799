"""A real `coins serve` killed with SIGKILL during a stream of adds, then restarted: the check
of tests/serve/api/test_live_updates.py and of benchmarks/bench_live_updates.py."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from coins.serve.client.background import start_server

KEY = "l1ve"
ADMIN = {"X-API-Key": KEY}


def kill_during_adds(
    index_dir: Path, model: Path, kills: int, seed: int = 0, first_id: int = 10**6
) -> dict[str, Any]:
    """Start the server, add one item per request from one client, SIGKILL the server a random
    0-1 s after its first acknowledged add (a loaded machine may take seconds for that one);
    `kills` times. Then restart: every add acknowledged with a 200 must be found by
    GET /v1/items/{id}. Returns counts, the restart times and the ids lost (none, if all is
    well)."""
    rng = np.random.default_rng(seed)
    acknowledged: list[int] = []
    next_id = first_id
    restarts: list[float] = []  # seconds from start to ready, after each kill

    def adder(url: str, dim: int, n: int, stop: threading.Event, first: threading.Event) -> None:
        nonlocal next_id
        vectors = np.random.default_rng([seed, n])  # this thread's own generator
        with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as client:
            while not stop.is_set():
                item = {"id": next_id, "vector": vectors.standard_normal(dim).tolist()}
                try:
                    r = client.post("/v1/items", json={"items": [{**item, "coarse": "live"}]})
                except httpx.TransportError:
                    return  # killed mid-request: not acknowledged
                if r.status_code == 200:
                    acknowledged.append(next_id)
                    first.set()
                next_id += 1

    for n in range(kills + 1):
        start = time.perf_counter()
        proc, url = start_server(index_dir, model, "--api-key", KEY, "--workers", "2")
        if n:
            restarts.append(time.perf_counter() - start)
        if n == kills:
            break
        dim = httpx.get(f"{url}/v1/index").json()["dim"]
        stop, first = threading.Event(), threading.Event()
        thread = threading.Thread(target=adder, args=(url, dim, n, stop, first))
        thread.start()
        first.wait(timeout=120)
        time.sleep(float(rng.uniform(0.0, 1.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        thread.join()
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            lost = [i for i in acknowledged if client.get(f"/v1/items/{i}").status_code != 200]
    finally:
        proc.kill()
        proc.wait()
    return {"kills": kills, "acknowledged": len(acknowledged), "lost": lost, "restarts": restarts}
