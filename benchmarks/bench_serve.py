"""Load benchmark of the search API: concurrent clients for vector and image queries, and the
API's vector-query QPS against in-process FAISS at the same batch; optionally the effect of
`gate=coarse` on fine Recall@1 and latency.

Against a running server:
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --seconds 30 --concurrency 16
Starting one itself (and measuring in-process FAISS on the same index):
    python benchmarks/bench_serve.py --index-dir runs/fm-index --model runs/fm.onnx \\
        --seconds 30 --concurrency 16 --batch 1 --batch 64 --dataset fashion-mnist --gate-eval 2000

Every request must succeed: any error status is counted and printed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from coins.serve.client.background import start_server, stop_server


@dataclass
class Run:
    """One load run: what was sent and what came back."""

    name: str
    batch: int
    concurrency: int
    seconds: float = 0.0
    requests: int = 0
    queries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms) or [float("nan")]
        return {
            "name": self.name,
            "batch": self.batch,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "rps": self.requests / self.seconds if self.seconds else 0.0,
            "qps": self.queries / self.seconds if self.seconds else 0.0,
        }


Request = Callable[[httpx.AsyncClient, int], Any]  # (client, worker) -> awaitable response


async def load(url: str, run: Run, send: Request, seconds: float) -> Run:
    """`run.concurrency` clients sending back to back for `seconds`."""
    limits = httpx.Limits(
        max_connections=run.concurrency, max_keepalive_connections=run.concurrency
    )
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    r = await send(client, w)
                    ok, kind = r.status_code == 200, str(r.status_code)
                except httpx.HTTPError as err:
                    ok, kind = False, type(err).__name__
                run.latencies_ms.append(1000 * (time.perf_counter() - start))
                run.requests += 1
                if ok:
                    run.queries += run.batch
                else:
                    run.errors[kind] = run.errors.get(kind, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(run.concurrency)))
        run.seconds = time.perf_counter() - t0
    return run


def vector_request(xq: np.ndarray, batch: int, k: int) -> Request:
    """Batches of rows of `xq`, a different slice for every request."""
    counter = iter(range(10**12))

    def send(client: httpx.AsyncClient, _: int) -> Any:
        start = (next(counter) * batch) % max(1, len(xq) - batch)
        body = {"vectors": xq[start : start + batch].tolist(), "k": k, "with_metadata": False}
        return client.post("/v1/search", json=body)

    return send


def image_request(images: list[bytes], batch: int, k: int, gate: str) -> Request:
    counter = iter(range(10**12))

    def send(client: httpx.AsyncClient, _: int) -> Any:
        start = (next(counter) * batch) % max(1, len(images) - batch)
        files = [("images", (f"{i}.png", images[start + i], "image/png")) for i in range(batch)]
        return client.post("/v1/search/image", files=files, data={"k": str(k), "gate": gate})

    return send


def faiss_qps(index_dir: Path, xq: np.ndarray, batch: int, k: int, seconds: float) -> float:
    """Queries per second of SearchIndex.search in this process, batch after batch, no HTTP:
    the better of FAISS on one thread and on every core (OpenMP on a busy machine can lose)."""
    import os

    import faiss

    from coins.serve.index.store import SearchIndex

    index = SearchIndex.load(index_dir)
    best = 0.0
    for threads in sorted({1, len(os.sched_getaffinity(0))}):
        faiss.omp_set_num_threads(threads)
        done, i, end = 0, 0, time.perf_counter() + seconds / 2
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            start = (i * batch) % max(1, len(xq) - batch)
            index.search(xq[start : start + batch], k)
            done, i = done + batch, i + 1
        best = max(best, done / (time.perf_counter() - t0))
    return best


def query_vectors(url: str, index_dir: Path | None, n: int, seed: int = 0) -> np.ndarray:
    """Stored vectors (plus a little noise) when the index folder is here, else random ones."""
    rng = np.random.default_rng(seed)
    if index_dir is not None:
        from coins.serve.index.store import SearchIndex

        index = SearchIndex.load(index_dir)
        ids, _, _ = index.labels()
        xb = index.reconstruct(rng.choice(ids, size=min(n, len(ids)), replace=False))
        xq = xb + 0.05 * rng.standard_normal(xb.shape).astype(np.float32) / np.sqrt(xb.shape[1])
    else:
        dim = httpx.get(f"{url}/v1/index", timeout=30).json()["dim"]
        xq = rng.standard_normal((n, dim)).astype(np.float32)
    return (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)


def query_images(dataset: str | None, split: str, n: int, size: int) -> list[bytes]:
    """PNG files of a data set's first n images, or of random noise at the model's input size."""
    from coins.serve.client.recall import png_bytes

    if dataset is not None:
        from coins.retrieval.data import build_dataset

        data = build_dataset(dataset, split)
        return [png_bytes(data.image(i)) for i in range(min(n, len(data)))]
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        png_bytes(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        for _ in range(n)
    ]


GATE_MIN_PROBS = (0.0, 0.3, 0.5, 0.7, 0.9)  # gate_min_prob thresholds of the top-1 gate


def gate_effect(url: str, dataset: str, split: str, limit: int) -> list[dict[str, Any]]:
    """Fine Recall@1/8, the fraction gated and time per image through the API, without and
    with gate=coarse (top-1 at each of GATE_MIN_PROBS, top-2 always gated)."""
    from coins.retrieval.data import build_dataset
    from coins.serve.client.http import SearchClient
    from coins.serve.client.recall import recall_by_images

    data = build_dataset(dataset, split)
    rows = []
    with SearchClient(url) as client:
        cases = [("none", 1, 0.0), *(("coarse", 1, p) for p in GATE_MIN_PROBS)]
        for gate, top, min_prob in [*cases, ("coarse", 2, 0.0)]:
            t0 = time.perf_counter()
            metrics, _ = recall_by_images(
                client, data, ks=(1, 8), limit=limit, gate=gate, gate_top=top, batch=32,
                gate_min_prob=min_prob,
            )  # fmt: skip
            ms = 1000 * (time.perf_counter() - t0) / max(1, metrics["queries"])
            name = "none" if gate == "none" else f"coarse top-{top}, min_prob {min_prob}"
            rows.append({"gate": name, "gated": 0.0, **metrics, "ms_per_image": ms})
    return rows


def print_table(rows: list[dict[str, Any]], keys: list[str]) -> None:
    print(" | ".join(keys))
    for row in rows:
        cells = [
            f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys
        ]
        print(" | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        extra = ["--workers", str(args.workers)] if args.workers else []
        proc, url = start_server(args.index_dir, args.model, *extra, timeout=600)
        print(f"started coins serve on {url}")
    try:
        return run_all(args, url)
    finally:
        if proc is not None:
            stop_server(proc)


def run_all(args: argparse.Namespace, url: str) -> int:
    info = httpx.get(f"{url}/v1/index", timeout=30).json()
    key = info["manifest"].get("index_key")
    print(f"index: {info['ntotal']:,} items, dimension {info['dim']}, {key}")
    xq = query_vectors(url, args.index_dir, 4096)
    results: list[dict[str, Any]] = []
    for batch in args.batch:
        run = asyncio.run(
            load(
                url,
                Run("vectors", batch, args.concurrency),
                vector_request(xq, batch, args.k),
                args.seconds,
            )
        )
        row = run.summary()
        if args.index_dir is not None:
            row["faiss_qps"] = faiss_qps(args.index_dir, xq, batch, args.k, min(args.seconds, 10))
            row["api/faiss"] = row["qps"] / row["faiss_qps"]
        results.append(row)
    if not args.no_images:
        size = int((info["manifest"].get("preprocess") or {}).get("input_size", 32))
        images = query_images(args.dataset, args.split, 512, size)
        for gate in args.image_gate:
            run = Run(f"images gate={gate}", args.image_batch, args.concurrency)
            run = asyncio.run(
                load(url, run, image_request(images, args.image_batch, args.k, gate), args.seconds)
            )
            results.append(run.summary())
    keys = ["name", "batch", "concurrency", "requests", "errors", "p50_ms", "p99_ms", "qps"]
    print_table(results, keys + (["faiss_qps", "api/faiss"] if args.index_dir else []))
    out: dict[str, Any] = {"index": {k: info[k] for k in ("ntotal", "dim")}, "load": results}
    if args.gate_eval:
        if args.dataset is None:
            raise SystemExit("--gate-eval needs --dataset (the indexed data set, for its labels)")
        out["gate"] = gate_effect(url, args.dataset, args.split, args.gate_eval)
        keys = ["gate", "gated", "recall@1", "recall@8", "queries", "ms_per_image"]
        print_table(out["gate"], keys)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    errors = sum(r["errors"] for r in results)
    if errors:
        print(f"FAILED: {errors} requests failed: {[r['error_kinds'] for r in results]}")
    return 1 if errors else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--url", help="A running server; omit to start one from --index-dir and --model."
    )
    p.add_argument(
        "--index-dir", type=Path, help="Index folder (also for the in-process FAISS QPS)."
    )
    p.add_argument("--model", type=Path, help="ONNX model, to start a server.")
    p.add_argument("--workers", type=int, help="Search threads of a started server.")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--batch",
        type=int,
        action="append",
        help="Vectors per request (repeatable; default 1 and 64).",
    )
    p.add_argument("--image-batch", type=int, default=1, help="Images per request.")
    p.add_argument("--image-gate", action="append", help="none and/or coarse (default none).")
    p.add_argument("--no-images", action="store_true", help="Only vector queries.")
    p.add_argument("-k", type=int, default=10)
    p.add_argument(
        "--dataset", help="Images to send (default random noise) and labels for --gate-eval."
    )
    p.add_argument("--split", default="test")
    p.add_argument(
        "--gate-eval",
        type=int,
        default=0,
        metavar="N",
        help="Recall@1 with/without gate=coarse on N images.",
    )
    p.add_argument("--json", help="Write the results here.")
    args = p.parse_args(argv)
    args.batch = args.batch or [1, 64]
    args.image_gate = args.image_gate or ["none"]
    if args.url is None and (args.index_dir is None or args.model is None):
        p.error("give --url, or --index-dir and --model to start a server")
    return args


if __name__ == "__main__":
    raise SystemExit(main())
