"""Live updates of a real `coins serve`: adds and deletes under searching clients, and SIGKILLs
during adds (issue 11, "Done when").

    python benchmarks/bench_live_updates.py --seconds 60 --adds 1000 --deletes 200 --clients 8 \\
        --kills 5

(a) One admin client adds `--adds` items one by one, as fast as the server answers, deleting one
of them after every `adds/deletes` adds, while `--clients` clients search (one vector, k=10) for
`--seconds`; before that, the same clients search `--seconds` with no writes. Reported: failed
requests (any non-200), acknowledged adds not found by GET /v1/items/{id} or not their own top-1
afterwards, acknowledged deletes still found, p50/p99 search latency without writes and while
the admin client writes (searches started during its run), adds per second, and the index
generation at the end (the server compacts its log every `--compact-after` records, in the
background). (b) tests/support/live_server.py `kill_during_adds`: `--kills` SIGKILLs at random
moments during adds, then a restart finds every acknowledged add, and the index loads.

Without --index-dir/--model it exports a tiny randomly initialised model (the tests' TINY_MODEL)
and builds a flat index of `--gallery` random unit vectors for it; with them it works on a copy
of that index. Exit status 1 unless every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from live_server import ADMIN, KEY, kill_during_adds

from coins.serve.client.background import start_server, stop_server
from coins.serve.index.store import SearchIndex


def build(root: Path, n: int) -> tuple[Path, Path]:
    """A tiny random ONNX model and a flat index of n random unit vectors made for it."""
    import torch
    from train_fixtures import TINY_MODEL

    from coins.retrieval.models import Embedder, EmbedderConfig
    from coins.retrieval.onnx.contract import model_sha256
    from coins.retrieval.onnx.export import export_model
    from coins.retrieval.onnx.runner import OnnxEmbedder
    from coins.serve.index.build import build_index

    torch.manual_seed(0)
    model = root / "tiny.onnx"
    export_model(Embedder(EmbedderConfig.from_dict(TINY_MODEL)).eval(), model)
    dim = OnnxEmbedder(model, threads=1).dim
    xb = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)  # [n, D]
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    rows = [{"id": i, "coarse": "gallery"} for i in range(n)]
    index_dir = root / "index"
    build_index(np.arange(n, dtype=np.int64), xb, rows, index_dir, index_key="flat",
                model_sha256=model_sha256(model), tune_queries=0)  # fmt: skip
    return model, index_dir


def index_copies(root: Path, args: argparse.Namespace, names: list[str]) -> tuple[Path, list[Path]]:
    """The model and copies of the index (`--index-dir` and `--model`, else `build` of
    `--gallery` items) in root/NAME, without a writer lock a server may have left."""
    if args.index_dir is None:
        model, built = build(root, args.gallery)
    else:
        model, built = args.model, args.index_dir
    copies = [root / name for name in names]
    for copy in copies:
        shutil.copytree(built, copy, ignore=shutil.ignore_patterns(".writer.lock"))
    return model, copies


@dataclass
class Searches:
    """What the searching clients saw: (start, seconds) of each 200, and the failures."""

    timings: list[tuple[float, float]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def latency_ms(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        took = np.array([s for t, s in self.timings if start <= t < end]) * 1e3
        if not len(took):
            return {"n": 0}
        pct = np.percentile(took, [50, 99])
        return {"n": len(took), "p50": round(pct[0], 2), "p99": round(pct[1], 2)}


def search_for(url: str, dim: int, clients: int, seconds: float, seed: int) -> Searches:
    """`clients` threads searching one random vector (k=10) each, back to back, for `seconds`."""
    out, mutex = Searches(), threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(n: int) -> None:
        rng = np.random.default_rng([seed, n])
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.perf_counter() < deadline:
                body = {"vectors": [rng.standard_normal(dim).tolist()], "k": 10}
                start = time.perf_counter()
                try:
                    r = http.post("/v1/search", json=body)
                    error = None if r.status_code == 200 else f"search {r.status_code}"
                except httpx.HTTPError as e:
                    error = f"search {type(e).__name__}"
                took = time.perf_counter() - start
                with mutex:
                    if error is None:
                        out.timings.append((start, took))
                    else:
                        out.failed.append(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@dataclass
class Writes:
    added: dict[int, list[float]] = field(default_factory=dict)  # acknowledged id -> vector
    deleted: list[int] = field(default_factory=list)  # acknowledged
    failed: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


def write(url: str, dim: int, adds: int, deletes: int, first_id: int, seed: int) -> Writes:
    """Add `adds` items one per request; after every adds//deletes adds, delete one of them."""
    rng = np.random.default_rng([seed, 1])  # not the gallery's stream: no duplicate vectors
    out = Writes(start=time.perf_counter())
    every = max(1, adds // max(deletes, 1))
    with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as http:
        for n in range(adds):
            v = rng.standard_normal(dim)
            v = (v / np.linalg.norm(v)).tolist()
            i = first_id + n
            r = http.post("/v1/items", json={"items": [{"id": i, "vector": v, "coarse": "live"}]})
            if r.status_code == 200:
                out.added[i] = v
            else:
                out.failed.append(f"add {r.status_code}: {r.text[:200]}")
            if deletes and (n + 1) % every == 0 and len(out.deleted) < deletes:
                kept = sorted(set(out.added) - set(out.deleted))
                victim = int(rng.choice(kept))
                r = http.request("DELETE", "/v1/items", json={"ids": [victim]})
                if r.status_code == 200 and r.json()["removed"] == 1:
                    out.deleted.append(victim)
                else:
                    out.failed.append(f"delete {r.status_code}: {r.text[:200]}")
    out.end = time.perf_counter()
    return out


def check_writes(url: str, writes: Writes) -> dict[str, Any]:
    """Acknowledged adds found by id and as their own top-1; acknowledged deletes gone."""
    gone = set(writes.deleted)
    kept = [i for i in writes.added if i not in gone]
    with httpx.Client(base_url=url, timeout=60) as http:
        missing = [i for i in kept if http.get(f"/v1/items/{i}").status_code != 200]
        still = [i for i in writes.deleted if http.get(f"/v1/items/{i}").status_code != 404]
        not_top1 = []
        for at in range(0, len(kept), 100):
            batch = kept[at : at + 100]
            body = {"vectors": [writes.added[i] for i in batch], "k": 1, "with_metadata": False}
            results = http.post("/v1/search", json=body).json()["results"]
            top = [r["neighbors"][0]["id"] if r["neighbors"] else None for r in results]
            not_top1 += [i for i, t in zip(batch, top, strict=True) if t != i]
        generation = http.get("/v1/index").json()["manifest"]["generation"]
    return {"adds_not_found": missing, "deletes_still_found": still,
            "adds_not_own_top1": not_top1, "generation": generation}  # fmt: skip


def live_updates(index_dir: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(a): a window of searches alone, then one with the admin client writing."""
    proc, url = start_server(index_dir, model, "--api-key", KEY, "--workers", str(args.workers),
                             "--threads", "1")  # fmt: skip
    try:
        info = httpx.get(f"{url}/v1/index").json()
        dim, before = info["dim"], info["ntotal"]
        quiet = search_for(url, dim, args.clients, args.seconds, args.seed)
        done: list[Writes] = []
        writer = threading.Thread(
            target=lambda: done.append(write(url, dim, args.adds, args.deletes, 10**7, args.seed))
        )
        writer.start()
        busy = search_for(url, dim, args.clients, args.seconds, args.seed + 1)
        writer.join()
        (writes,) = done  # the writer's result (it failed if missing: see its traceback)
        checks = check_writes(url, writes)
        ntotal = httpx.get(f"{url}/v1/index").json()["ntotal"]
    finally:
        stop_server(proc)
    on_disk = SearchIndex.load(index_dir)
    during = busy.latency_ms(writes.start, writes.end)
    alone = quiet.latency_ms()
    return {
        "index_items_before": before,
        "searches_alone_ms": alone,
        "searches_during_writes_ms": during,
        "searches_after_writes_ms": busy.latency_ms(writes.end),
        "p99_ratio": round(during.get("p99", float("nan")) / alone.get("p99", float("nan")), 2),
        "write_seconds": round(writes.end - writes.start, 2),
        "adds_acknowledged": len(writes.added),
        "deletes_acknowledged": len(writes.deleted),
        "adds_per_second": round(len(writes.added) / (writes.end - writes.start), 1),
        "failed_requests": quiet.failed + busy.failed + writes.failed,
        **checks,
        "served_ntotal": ntotal,
        "on_disk_ntotal_after_stop": on_disk.ntotal,
        "expected_ntotal": before + len(writes.added) - len(writes.deleted),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="each search window")
    parser.add_argument("--adds", type=int, default=1000)
    parser.add_argument("--deletes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8, help="searching clients")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs during adds, (b)")
    parser.add_argument("--gallery", type=int, default=20_000, help="items of the built index")
    parser.add_argument("--index-dir", type=Path, help="an index to copy (default: build one)")
    parser.add_argument("--model", type=Path, help="the ONNX model of --index-dir")
    parser.add_argument("--workers", type=int, default=4, help="the server's search threads")
    parser.add_argument("--compact-after", type=int, default=500, help="log records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()
    if (args.index_dir is None) != (args.model is None):
        parser.error("give both --index-dir and --model, or neither")
    os.environ["COINS_COMPACT_AFTER_RECORDS"] = str(args.compact_after)  # the servers started
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        model, (a, b) = index_copies(Path(tmp), args, ["a", "b"])
        results: dict[str, Any] = {"load_average": os.getloadavg(), "cpus": os.cpu_count()}
        results["a"] = live_updates(a, model, args)
        kills = kill_during_adds(b, model, args.kills, seed=args.seed)
        loads = SearchIndex.load(b, verify="full")
        results["b"] = {**kills, "lost": kills["lost"], "loads_ntotal": loads.ntotal}
        results["load_average_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    a, b = results["a"], results["b"]
    ok = not a["failed_requests"] and not a["adds_not_found"] and not a["deletes_still_found"]
    ok &= not a["adds_not_own_top1"]
    ok &= a["served_ntotal"] == a["on_disk_ntotal_after_stop"] == a["expected_ntotal"]
    ok &= b["acknowledged"] > 0 and not b["lost"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
