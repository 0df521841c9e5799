"""Two replicas behind nginx (deploy/replicas.sh) follow the generations the one writer commits
(issue 11, "Done when": both serve a new generation within 5 s, no request fails meanwhile).

    python benchmarks/bench_replicas.py --commits 3 --clients 4

Starts deploy/replicas.sh on a copy of the index (two `coins serve --follow` processes and
nginx, on free loopback ports) and, once both replicas are ready, `--clients` clients search
through nginx (one random vector, k=10, back to back) for the whole run. Meanwhile the writer
(this process, holding the directory's writer lock) commits `--commits` new generations, each
adding `--add` items (SearchIndex add + save: a new FAISS file and metadata database, then the
atomic rename of index.json), `--pause` seconds apart. Reported per commit: seconds from the
commit (the rename) until each replica, asked directly, serves the new item count; and over the
run: failed searches (any non-200 or transport error) and their number per second.

With `--kill-replica SECONDS` there are no commits: after that many seconds of searching,
replica a is killed with SIGKILL (every process of it), and the run reports the searches that
failed through nginx (target 0), the seconds until the script's supervisor had it ready again,
and the script's log lines of the death and the restart (issue 26).

    python benchmarks/bench_replicas.py --kill-replica 5 --clients 4

Without --index-dir/--model it builds a tiny random model and a flat index of `--gallery`
random unit vectors (benchmarks/bench_live_updates.py `build`). Exit status 1 unless every
generation reached both replicas within `--target` seconds with no failed search. Needs nginx
on PATH (Debian: apt-get install -y nginx).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_live_updates import index_copies, search_for

from coins.serve.client.background import free_port
from coins.serve.index.store import SearchIndex
from coins.serve.index.writer_lock import WriterLock

ROOT = Path(__file__).resolve().parents[1]


def start_replicas(
    index_dir: Path, model: Path, run_dir: Path, interval: float, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """deploy/replicas.sh on free ports; its process and the nginx and replica URLs; its
    stderr (the supervisors' log) goes to `log` if given."""
    ports = {name: free_port() for name in ("nginx", "a", "b")}
    env = {
        **os.environ,
        "PORT": str(ports["nginx"]), "PORT_A": str(ports["a"]), "PORT_B": str(ports["b"]),
        "COINS": f"{sys.executable} -m coins.cli", "RUN_DIR": str(run_dir),
        "FOLLOW_INTERVAL": str(interval), "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    cmd = ["bash", str(ROOT / "deploy" / "replicas.sh"), str(index_dir), str(model),
           "--workers", "2", "--threads", "1", "--log-level", "warning"]  # fmt: skip
    stderr = open(log, "ab") if log is not None else None  # noqa: SIM115 (the child holds it)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=stderr)
    return proc, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


def stop_replicas(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the script (it stops nginx and the replicas), SIGKILL to the group after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], urls: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"deploy/replicas.sh exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout} s")
            time.sleep(0.1)


def commit(index_dir: Path, model_sha256: str, first_id: int, n: int, dim: int) -> int:
    """The one writer: add n random items and commit the next generation; its item count."""
    rng = np.random.default_rng(first_id)
    xb = rng.standard_normal((n, dim)).astype(np.float32)  # [n, D]
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    with WriterLock(index_dir, "bench_replicas"):
        index = SearchIndex.load(index_dir, model_sha256)
        index.add(ids, xb, [{"id": int(i), "coarse": "new"} for i in ids])
        index.save()
        return index.ntotal


def seconds_until_served(urls: dict[str, str], ntotal: int, since: float, timeout: float) -> dict:
    """Seconds after `since` at which each replica first answered GET /v1/index with `ntotal`."""
    out: dict[str, float | None] = {name: None for name in urls}
    while any(v is None for v in out.values()) and time.perf_counter() - since < timeout:
        for name, url in urls.items():
            if out[name] is None and httpx.get(f"{url}/v1/index").json()["ntotal"] == ntotal:
                out[name] = round(time.perf_counter() - since, 2)
        time.sleep(0.02)
    return out


def serving_pids(port: str) -> list[int]:
    """The pids of every `coins serve` process listening on `port` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"serve" in argv and b"--port" in argv and port.encode() in argv:
            found.append(int(entry.name))
    return found


def kill_one(
    index_dir: Path, model: Path, run_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Search through nginx while replica a is killed with SIGKILL and restarted."""
    from concurrent.futures import ThreadPoolExecutor

    log = run_dir.parent / "replicas.log"
    proc, urls = start_replicas(index_dir, model, run_dir, args.interval, log)
    try:
        wait_ready(proc, [urls["a"], urls["b"]], timeout=120)
        dim = httpx.get(f"{urls['nginx']}/v1/index").json()["dim"]
        seconds = args.kill_replica + 4 * args.target
        with ThreadPoolExecutor(1) as pool:
            searching = pool.submit(
                search_for, urls["nginx"], dim, args.clients, seconds, args.seed
            )
            time.sleep(args.kill_replica)
            victims = serving_pids(urls["a"].rsplit(":", 1)[1])
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            killed = time.perf_counter()
            back = None
            while back is None and time.perf_counter() - killed < 3 * args.target:
                try:
                    if httpx.get(f"{urls['a']}/readyz", timeout=1).status_code == 200:
                        back = round(time.perf_counter() - killed, 2)
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            searches = searching.result()
        stopped_early = proc.poll()
    finally:
        stop_replicas(proc)
    lines = log.read_text().splitlines() if log.exists() else []
    return {
        "killed_pids": victims,
        "seconds_until_ready_again": back,
        "searches_ok": len(searches.timings),
        "failed_searches": len(searches.failed),
        "failures": sorted(set(searches.failed))[:10],
        "latency_ms": searches.latency_ms(),
        "script_exited_early": stopped_early,
        "supervisor_log": [line for line in lines if "replica" in line],
    }


def run(index_dir: Path, model: Path, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from coins.retrieval.onnx.contract import model_sha256

    sha = model_sha256(model)
    proc, urls = start_replicas(index_dir, model, run_dir, args.interval)
    try:
        replicas = {name: urls[name] for name in ("a", "b")}
        wait_ready(proc, list(replicas.values()), timeout=120)
        info = httpx.get(f"{urls['nginx']}/v1/index").json()
        dim, first_id = info["dim"], 10**12
        seconds = args.pause * (args.commits + 1) + 2 * args.target * args.commits
        with ThreadPoolExecutor(1) as pool:  # the searching clients, through nginx
            searching = pool.submit(
                search_for, urls["nginx"], dim, args.clients, seconds, args.seed
            )
            commits = []
            for c in range(args.commits):
                time.sleep(args.pause)
                ntotal = commit(index_dir, sha, first_id + c * args.add, args.add, dim)
                since = time.perf_counter()
                served = seconds_until_served(replicas, ntotal, since, 2 * args.target)
                commits.append({"ntotal": ntotal, "seconds_until_served": served})
            searches = searching.result()
        stopped_early = proc.poll()
    finally:
        stop_replicas(proc)
    worst = [s for c in commits for s in c["seconds_until_served"].values()]
    return {
        "commits": commits,
        "worst_seconds_until_both_served": None if None in worst else max(worst),
        "searches_ok": len(searches.timings),
        "searches_per_s": round(len(searches.timings) / seconds, 1),
        "failed_searches": len(searches.failed),
        "failures": sorted(set(searches.failed))[:10],
        "latency_ms": searches.latency_ms(),
        "script_exited_early": stopped_early,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=3, help="generations the writer commits")
    parser.add_argument("--add", type=int, default=100, help="items added by each commit")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds before each commit")
    parser.add_argument("--clients", type=int, default=4, help="searching clients (via nginx)")
    parser.add_argument("--interval", type=float, default=1.0, help="--follow-interval, s")
    parser.add_argument("--target", type=float, default=5.0, help="seconds to serve a commit")
    parser.add_argument("--gallery", type=int, default=20_000, help="items of the built index")
    parser.add_argument("--index-dir", type=Path, help="an index to copy (default: build one)")
    parser.add_argument("--model", type=Path, help="the ONNX model of --index-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kill-replica", type=float, metavar="SECONDS",
        help="instead of commits: SIGKILL replica a after SECONDS of searching",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()
    if (args.index_dir is None) != (args.model is None):
        parser.error("give both --index-dir and --model, or neither")
    if shutil.which("nginx") is None:
        parser.error("nginx not found on PATH (Debian: apt-get install -y nginx)")
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        root = Path(tmp)
        model, (shared,) = index_copies(root, args, ["shared"])
        results: dict[str, Any] = {"load_average": os.getloadavg(), "cpus": os.cpu_count()}
        measure = kill_one if args.kill_replica is not None else run
        results.update(measure(shared, model, root / "run", args))
        results["load_average_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    if args.kill_replica is not None:
        back = results["seconds_until_ready_again"]
        return 0 if back is not None and results["failed_searches"] == 0 else 1
    worst = results["worst_seconds_until_both_served"]
    ok = worst is not None and worst <= args.target and results["failed_searches"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
