"""Wall time and peak memory of the retrieval metrics on random unit vectors.

    .venv/bin/python benchmarks/bench_metrics.py                 # every case
    .venv/bin/python benchmarks/bench_metrics.py knn-60k recall-60k

Each case runs in a fresh process, so its peak RSS (ru_maxrss) is its own, data included.
The 60k x 512 full case searches k ~ 6,000 neighbours per query for MAP@R (10 labels of
~6,000 items): its cost is the N^2 d inner products plus a k-deep heap per query.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from coins.retrieval.knn import exact_knn
from coins.retrieval.metrics import recall_at_k, retrieval_metrics


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Random L2-normalised float32 vectors [n, d]."""
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def labels_of(n: int, num_labels: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_labels, n)


def knn_only(n: int, d: int) -> str:
    blocks = sum(1 for _ in exact_knn(unit_vectors(n, d), k=9))
    return f"exact_knn k=9, {blocks} blocks"


def recall_only(n: int, d: int) -> str:
    r = recall_at_k(unit_vectors(n, d), labels_of(n))
    return " ".join(f"R@{K}={v:.4f}" for K, v in r.items())


def full(n: int, d: int) -> str:
    m = retrieval_metrics(unit_vectors(n, d), labels_of(n))
    return " ".join(f"{key}={v:.4f}" for key, v in m.items())


CASES: dict[str, tuple[Callable[[int, int], str], int, int]] = {
    "knn-60k": (knn_only, 60_000, 512),
    "recall-60k": (recall_only, 60_000, 512),
    "full-10k": (full, 10_000, 128),  # fashion-mnist test split size
    "full-60k": (full, 60_000, 512),
}


def run_case(name: str) -> None:
    """Run one case in this process and print its wall time and peak RSS."""
    fn, n, d = CASES[name]
    t0 = time.perf_counter()
    result = fn(n, d)
    wall = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"{name:11s} N={n} d={d}  wall {wall:7.1f} s  peak RSS {peak_mib:6.0f} MiB  {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cases = args.cases or list(CASES)
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}; expected some of {list(CASES)}")
    if args.in_process:
        run_case(args.cases[0])
        return
    for name in args.cases:
        subprocess.run([sys.executable, __file__, "--in-process", name], check=True)


if __name__ == "__main__":
    main()
