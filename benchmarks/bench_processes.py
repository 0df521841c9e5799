"""Several `coins serve` processes on one memory-mapped index (issue 11, "Done when": the second
process adds < 10 % of the index size to total memory; 2 processes give >= 1.7x the QPS of one
at batch 1, or the measured bound).

    python benchmarks/bench_catalogue_index.py generate /tmp/cat --n 1000000 --folders 4
    python benchmarks/bench_catalogue_index.py build /tmp/cat --type IVF1024,Flat --on-disk
    python benchmarks/bench_processes.py /tmp/cat --seconds 30 --clients 8

For 1, then 2 processes (`coins serve --mmap [--processes 2]`, 2 search threads and 1 FAISS
thread each): wait until every process reports ready in /metrics, then `--clients` client
threads (each one keep-alive connection, so the kernel spreads connections over processes)
send one query vector per request (k=10, the catalogue's held-out queries in turn) for
`--seconds` after a warm-up of `--warmup` seconds. Memory is read after the run, when the
searches have touched the index pages they need: RSS and PSS from /proc/PID/smaps_rollup of
every worker process (PSS divides each shared page among the processes mapping it, so its sum
counts a page of the index once), and of the supervisor apart. The clients run on the same
machine and share its cores: the load average before and after each run is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from coins.serve.client.background import start_server, stop_server

MEMORY = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous", "Shared_Clean")


def memory_kib(pid: int) -> dict[str, int]:
    """Resident and proportional set sizes (KiB) of one process, from /proc/PID/smaps_rollup:
    Pss_File is mostly the mapped index (shared), Anonymous the process's own heap."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    found = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
    return {k: int(found[k]) for k in MEMORY}


def workers_of(pid: int) -> list[int]:
    """uvicorn's spawned workers: children of `pid` but multiprocessing's resource tracker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid and b"resource_tracker" not in cmdline:
            found.append(int(stat.parent.name))
    return found


def ready_count(url: str) -> int:
    """Processes whose `coins_ready` is 1 in /metrics (one sample per process when several)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return len(re.findall(r"^coins_ready(\{[^}]*\})? 1\.0$", text, re.M))


def load_queries(url: str, xq: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    """Queries per second and latency of `clients` threads sending one vector per request."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = c
            while not stop.is_set():
                t = time.perf_counter()
                r = http.post(
                    "/v1/search", json={"vectors": xq[i % len(xq)][None].tolist(), "k": 10}
                )
                latencies[c].append(time.perf_counter() - t)
                failures[c] += r.status_code != 200
                i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ms = 1000 * np.concatenate([np.asarray(lat) for lat in latencies])
    return {
        "qps": round(len(ms) / elapsed, 1), "requests": len(ms), "failed": sum(failures),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }  # fmt: skip


def run(out: Path, name: str, processes: int, args: argparse.Namespace) -> dict[str, Any]:
    xq = np.load(out / "queries.npy")
    extra = ["--processes", str(processes)] if processes > 1 else []
    flags = ["--mmap", "--workers", "2", "--threads", "1", "--faiss-threads", "1", *extra]
    t0 = time.perf_counter()
    proc, url = start_server(out / name, out / "model.onnx", *flags, timeout=600)
    while ready_count(url) < processes:
        time.sleep(0.2)
    ready_s = time.perf_counter() - t0
    try:
        load_queries(url, xq, args.clients, args.warmup)
        load_before = os.getloadavg()
        figures = load_queries(url, xq, args.clients, args.seconds)
        load_after = os.getloadavg()
        workers = workers_of(proc.pid) if processes > 1 else [proc.pid]
        assert len(workers) == processes, workers
        memory = [memory_kib(pid) for pid in workers]
        supervisor = memory_kib(proc.pid) if processes > 1 else dict.fromkeys(MEMORY, 0)
    finally:
        stop_server(proc)
    return {
        "processes": processes, "ready_s": round(ready_s, 1), **figures,
        "rss_mib": round(sum(m["Rss"] for m in memory) / 1024, 1),
        "pss_mib": round(sum(m["Pss"] for m in memory) / 1024, 1),
        "anon_mib": round(sum(m["Anonymous"] for m in memory) / 1024, 1),
        "pss_file_mib": round(sum(m["Pss_File"] for m in memory) / 1024, 1),
        "per_process": memory, "supervisor_kib": supervisor,
        "loadavg_before": load_before, "loadavg_after": load_after,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="A bench_catalogue_index.py folder, built.")
    p.add_argument("--index", default="index", help="Index folder name inside OUT.")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--warmup", type=float, default=10)
    args = p.parse_args()
    index_mib = sum(f.stat().st_size for f in (args.out / args.index).rglob("*") if f.is_file())
    index_mib /= 2**20
    one, two = (run(args.out, args.index, n, args) for n in (1, 2))
    summary = {
        "index_mib": round(index_mib, 1), "cores": os.cpu_count(),
        "second_process_pss_mib": round(two["pss_mib"] - one["pss_mib"], 1),
        "second_process_pss_with_supervisor_mib": round(
            two["pss_mib"] + two["supervisor_kib"]["Pss"] / 1024 - one["pss_mib"], 1
        ),
        "second_process_pss_over_index": round((two["pss_mib"] - one["pss_mib"]) / index_mib, 3),
        "second_process_rss_over_index": round((two["rss_mib"] - one["rss_mib"]) / index_mib, 3),
        "qps_2_over_1": round(two["qps"] / one["qps"], 2),
    }  # fmt: skip
    print(json.dumps({"one": one, "two": two, "summary": summary}, indent=1))
    sys.exit(0 if one["failed"] == two["failed"] == 0 else 1)


if __name__ == "__main__":
    main()
