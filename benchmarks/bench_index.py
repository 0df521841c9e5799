"""Index build time, peak memory, 10-recall@10 and query latency of flat, ivf and hnsw.

Data: L2-normalised 128-d vectors around n / 100 random centres (Gaussian noise of norm ~0.6
before normalising), so the nearest neighbours of a query are few and ANN search is meaningful.
Queries are held out: drawn from the same centres, not in the index. Each (size, kind) runs
in its own process, so its peak RSS is its own: `build` is the whole `build_index` (choice,
training, adding, tuning to 0.95 10-recall@10 on 1,000 of the vectors held out until tuned,
saving), `peak over data` the RSS high-water mark during it minus the RSS with the data
alone. Recall and latency are measured after loading the saved index: batch = all queries in
one call on every thread (ms per query), p50/p99 = one query per call on one thread.

    .venv/bin/python benchmarks/bench_index.py                      # 60k and 1M, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_index.py --sizes 60000 --kinds flat hnsw
"""

# ruff: noqa: E741

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

D = 128
SIGMA = 0.6
SEED = 0


def clustered(n: int, nq: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """xb [n, D] and held-out xq [nq, D], unit norm, around n // 100 shared centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n + nq, D), dtype=np.float32)
    for s in range(0, n + nq, 100_000):  # in blocks: no [n, D] float64 temporary
        m = min(100_000, n + nq - s)
        noise = rng.standard_normal((m, D), dtype=np.float32) * (SIGMA / np.sqrt(D))
        x[s : s + m] = centres[rng.integers(0, len(centres), m)] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def rss_mib(field: str) -> float:
    """VmRSS or VmHWM (the high-water mark) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def run_one(n: int, kind: str, nq: int) -> dict[str, object]:
    """Build, save, load and measure one index; the child process's whole job."""
    from coins.serve.index.build import build_index
    from coins.serve.index.store import SearchIndex
    from coins.serve.index.tuning import k_recall, latency_ms

    xb, xq = clustered(n, nq)
    ids = np.arange(n, dtype=np.int64)
    rows = [{"id": i} for i in range(n)]
    base = rss_mib("VmRSS")
    reset_peak()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        build_index(ids, xb, rows, Path(out) / "index", index_key=kind)
        build_s = time.perf_counter() - t0
        peak = rss_mib("VmHWM")
        index = SearchIndex.load(Path(out) / "index")
        size_mib = sum(r.bytes for r in index.manifest.files.values()) / 2**20
        _, gt = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)  # [nq, 10] exact
        t0 = time.perf_counter()
        _, I = index.search(xq, 10)
        batch_ms = 1000 * (time.perf_counter() - t0) / nq
        p50, p99 = latency_ms(index.index, xq, 9)  # k + 1 = 10 neighbours per query
        return {
            "n": n,
            "kind": kind,
            "key": index.manifest.index_key,
            "params": index.manifest.index_params,
            "build_s": round(build_s, 1),
            "peak_mib": round(peak),
            "peak_over_data_mib": round(peak - base),
            "files_mib": round(size_mib),
            "recall": k_recall(I, gt),
            "tuned_recall": index.manifest.tuning.recall if index.manifest.tuning else None,
            "batch_ms": batch_ms,
            "p50_ms": p50,
            "p99_ms": p99,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("--queries", type=int, default=2000, help="held-out queries")
    parser.add_argument("--one", nargs=2, metavar=("N", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args.queries)))
        return
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d = {D}")
    header = (
        f"{'n':>9} {'kind':<5} {'key':<16} {'params':<16} {'build s':>8} {'peak MiB':>9} "
        f"{'+data MiB':>9} {'files':>6} {'10-R@10':>8} {'batch ms/q':>10} {'p50 ms':>7} "
        f"{'p99 ms':>7}"
    )
    print(header)
    results = []
    for n in args.sizes:
        for kind in args.kinds:
            cmd = [sys.executable, __file__, "--one", str(n), kind, "--queries", str(args.queries)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.append(r)
            params = ",".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
            print(
                f"{r['n']:>9,} {r['kind']:<5} {r['key']:<16} {params:<16} {r['build_s']:>8.1f} "
                f"{r['peak_mib']:>9,} {r['peak_over_data_mib']:>9,} {r['files_mib']:>6,} "
                f"{r['recall']:>8.4f} {r['batch_ms']:>10.4f} {r['p50_ms']:>7.3f} "
                f"{r['p99_ms']:>7.3f}",
                flush=True,
            )
    verdict(results)


def verdict(results: list[dict]) -> None:
    """Is an ANN index >= 10x faster than flat at >= 0.95 10-recall@10, at the largest n?"""
    n = max(r["n"] for r in results)
    flat = next((r for r in results if r["n"] == n and r["kind"] == "flat"), None)
    if flat is None:
        return
    for r in results:
        if r["n"] != n or r["kind"] == "flat":
            continue
        single, batch = flat["p50_ms"] / r["p50_ms"], flat["batch_ms"] / r["batch_ms"]
        ok = r["recall"] >= 0.95 and min(single, batch) >= 10
        print(
            f"{r['kind']} at n = {n:,}: 10-recall@10 {r['recall']:.4f}, {single:.1f}x faster "
            f"than flat one query at a time (p50), {batch:.1f}x in batch: "
            f"{'MEETS' if ok else 'MISSES'} >= 10x at >= 0.95"
        )


if __name__ == "__main__":
    main()
