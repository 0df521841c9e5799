"""The race driver: admin adds, deletes and reloads against searching clients, through any client
with `.get/.post/.delete` (a TestClient or httpx against a real server); used by
tests/serve/api/test_races.py and benchmarks/bench_serve_races.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KEY = "r4ce"  # the admin key the race's servers are started with
ADMIN = {"X-API-Key": KEY}


@dataclass
class RaceCounts:
    """What a race sent and what went wrong; `ok` when nothing did."""

    adds: int = 0  # acknowledged (200)
    deletes: int = 0
    reloads: int = 0
    searches: int = 0  # reads of any kind by the searching clients
    server_errors: list[str] = field(default_factory=list)  # 5xx or no answer
    refused: list[str] = field(default_factory=list)  # a 4xx where the request was valid
    lost_adds: list[int] = field(default_factory=list)  # acknowledged, then not found
    kept_deletes: list[int] = field(default_factory=list)  # acknowledged, then still found
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.refused or self.lost_adds or self.kept_deletes)

    def summary(self) -> str:
        return (
            f"{self.adds} adds, {self.deletes} deletes, {self.reloads} reloads, "
            f"{self.searches} searches in {self.seconds:.1f} s: "
            f"{len(self.server_errors)} 5xx, {len(self.refused)} refused, "
            f"{len(self.lost_adds)} acknowledged adds not found, "
            f"{len(self.kept_deletes)} acknowledged deletes still found"
        )


def race(
    client: Any,
    *,
    adds: int,
    reloads: int,
    deletes: int,
    searchers: int,
    gallery_ids: list[int],
    dim: int,
    image_path: Callable[[int], str | None] = lambda i: None,
    seed: int = 0,
    headers: dict[str, str] = ADMIN,
) -> RaceCounts:
    """Adds (new ids from 10**6, two threads), deletes (of `gallery_ids`, one thread) and
    reloads (two threads) at once, while `searchers` threads search, list and fetch items until
    the writers are done. Each add is looked up (GET and search by id) right after its 200, each
    delete likewise; at the end, one more reload, and every acknowledged change is checked again.
    Threads pause at random (seeded) so the interleavings differ from run to run of a seed."""
    counts = RaceCounts()
    guard = threading.Lock()
    done = threading.Event()
    added: list[int] = []
    deleted: list[int] = []

    def send(method: str, url: str, **kwargs: Any) -> Any:
        try:
            r = client.request(method, url, **kwargs)
        except Exception as err:  # a dropped connection counts as a server failure
            with guard:
                counts.server_errors.append(f"{method} {url}: {type(err).__name__}: {err}")
            return None
        if r.status_code >= 500:
            with guard:
                counts.server_errors.append(f"{method} {url} {r.status_code}: {r.text[:200]}")
        return r

    def expect(r: Any, method: str, url: str, status: int = 200) -> bool:
        if r is None or r.status_code >= 500:
            return False
        if r.status_code != status:
            with guard:
                counts.refused.append(f"{method} {url} {r.status_code}: {r.text[:200]}")
            return False
        return True

    def findable(id_: int) -> bool:
        """GET and search by id both find the item (a 404 from either: not found)."""
        got = send("GET", f"/v1/items/{id_}")
        hit = send("POST", "/v1/search", json={"ids": [id_], "k": 1})
        return all(r is not None and r.status_code == 200 for r in (got, hit))

    def gone(id_: int) -> bool:
        got = send("GET", f"/v1/items/{id_}")
        hit = send("POST", "/v1/search", json={"ids": [id_], "k": 1})
        return all(r is not None and r.status_code == 404 for r in (got, hit))

    def pause(rng: np.random.Generator) -> None:
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0, 0.003))

    def adder(worker: int, ids: list[int]) -> None:
        rng = np.random.default_rng([seed, 1, worker])
        for id_ in ids:
            pause(rng)
            v = rng.standard_normal(dim)
            item = {"id": id_, "vector": v.tolist(), "coarse": "new", "path": image_path(id_)}
            r = send("POST", "/v1/items", json={"items": [item]}, headers=headers)
            if not expect(r, "POST", "/v1/items"):
                continue
            with guard:
                counts.adds += 1
                added.append(id_)
            if not findable(id_):
                with guard:
                    counts.lost_adds.append(id_)

    def deleter(ids: list[int]) -> None:
        rng = np.random.default_rng([seed, 2])
        for id_ in ids:
            pause(rng)
            r = send("DELETE", "/v1/items", json={"ids": [id_]}, headers=headers)
            if not expect(r, "DELETE", "/v1/items"):
                continue
            if r.json()["removed"] != 1:
                with guard:
                    counts.refused.append(f"DELETE {id_}: {r.text[:200]}")
                continue
            with guard:
                counts.deletes += 1
                deleted.append(id_)
            if not gone(id_):
                with guard:
                    counts.kept_deletes.append(id_)

    def reloader(worker: int, n: int) -> None:
        rng = np.random.default_rng([seed, 3, worker])
        for _ in range(n):
            pause(rng)
            if expect(send("POST", "/v1/reload", headers=headers), "POST", "/v1/reload"):
                with guard:
                    counts.reloads += 1

    def searcher(worker: int) -> None:
        rng = np.random.default_rng([seed, 4, worker])
        while not done.is_set():
            pick, id_ = rng.integers(4), int(rng.choice(gallery_ids))
            if pick == 0:
                send("POST", "/v1/search", json={"vectors": [rng.standard_normal(dim).tolist()]})
            elif pick == 1:
                send("POST", "/v1/search", json={"ids": [id_], "k": 5})  # 404 once deleted
            elif pick == 2:
                send("GET", "/v1/items", params={"offset": int(rng.integers(50)), "limit": 20})
            else:
                send("GET", f"/v1/items/{id_}/image", params={"size": 16})
            with guard:
                counts.searches += 1

    rng = np.random.default_rng(seed)
    new_ids = [10**6 + i for i in range(adds)]
    victims = [int(i) for i in rng.choice(gallery_ids, size=deletes, replace=False)]
    writers = [
        threading.Thread(target=adder, args=(0, new_ids[0::2])),
        threading.Thread(target=adder, args=(1, new_ids[1::2])),
        threading.Thread(target=deleter, args=(victims,)),
        threading.Thread(target=reloader, args=(0, reloads - reloads // 2)),
        threading.Thread(target=reloader, args=(1, reloads // 2)),
    ]
    readers = [threading.Thread(target=searcher, args=(w,)) for w in range(searchers)]
    start = time.perf_counter()
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    counts.seconds = time.perf_counter() - start
    # after the dust settles: one more reload, then every acknowledged change, from the disk
    expect(send("POST", "/v1/reload", headers=headers), "POST", "/v1/reload")
    counts.lost_adds += [i for i in added if not findable(i) and i not in counts.lost_adds]
    counts.kept_deletes += [i for i in deleted if not gone(i) and i not in counts.kept_deletes]
    return counts
