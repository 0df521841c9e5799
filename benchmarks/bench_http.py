"""The search API under a compiled load generator (wrk), beside in-process FAISS, the commit
before a change and Chroma's server, on the same data in one run (issue 25).

    apt-get install -y wrk
    python3 -m venv /tmp/chroma-venv && /tmp/chroma-venv/bin/pip install chromadb py-spy
    git worktree add /tmp/coins-base <commit>
    python benchmarks/bench_http.py --work /tmp/bench-http --baseline /tmp/coins-base \
        --chroma /tmp/chroma-venv --seconds 10
    python benchmarks/bench_http.py --work /tmp/bench-http-small --n 20000 --seconds 3  # quick

Data (cached in `--work`): `--n` 128-d unit vectors around n/100 random centres and 1,000
held-out queries from the same centres (benchmarks/bench_catalogue_index.py, seeds 0-2), their
exact top-10 (ground truth), an IVF index (IVF4096,Flat at 1M; nprobe tuned by `coins index`
to 10-recall@10 >= 0.95) and a tiny ONNX model `coins serve` accepts for it.

Load: `wrk -t T -c C -d S -s benchmarks/wrk_search.lua URL -- bodies.txt`: each request
POSTs the next of the held-out queries (batch 1) or 16 of them (batch 16), k 10, metadata
included. Reported per case: requests and queries per second, p50/p99 of a request, non-2xx
responses, and the server's CPU time per request (utime + stime of its processes in /proc).

Systems: `coins serve --mmap` of this checkout (`--processes 1` and `2`; JSON bodies, and
base64 float32 vectors), the same of `--baseline` (a worktree of an older commit, imported in
place of this checkout: a folder holding only a `coins` link to it is put first on
PYTHONPATH; uvloop is hidden from it, which that commit did not declare), and `chroma run`
(`--chroma`, a venv with chromadb; HNSW M 16, ef_search 96, cosine) on the same vectors.
Recall through HTTP: every held-out query sent in batches of 16 to each server, against the
exact top-10, beside in-process `SearchIndex.search` at the same parameters.
With two cores or more, one more case per server: batch 1 on one connection with the server's
threads pinned to the first core and wrk to the others (`pinned_latency`; in-process FAISS is
timed on the same core), the nearest this machine comes to a client on another machine.
`--profile SECONDS` also records the new server under 1 connection with py-spy (`--chroma`'s
venv) and prints where its samples fall, by layer.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_search.lua"
K = 10
NQ = 1000
CHROMA_COLLECTION = "bench"
# the pinned latency case (`pinned_latency`): servers on the first core, wrk on the others
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
PINNING = len(CORES) >= 2
SERVER_CORES, CLIENT_CORES = set(CORES[:1]), set(CORES[1:])


# ---- data, ground truth, index --------------------------------------------------------------


def prepare(work: Path, n: int, index_key: str | None) -> dict[str, Any]:
    """Vectors, queries, exact top-10 and the index in `work`, each made once."""
    sys.path.insert(0, str(HERE))
    from bench_catalogue_index import generate

    from coins.serve.index.build import build_gallery_index

    data = work / "data"
    if not (data / "done").exists():
        shutil.rmtree(data, ignore_errors=True)
        generate(data, n, folders=1)
        (data / "done").write_text("")
    if not (work / "gt.npy").exists():
        np.save(work / "gt.npy", exact_top_k(data))
    key = index_key or f"IVF{4096 if n >= 500_000 else max(16, int(4 * n**0.5))},Flat"
    if not (work / "index" / "index.json").exists():
        t0 = time.perf_counter()
        build_gallery_index(work / "index", from_embeddings=[data / "shard-00"], index_key=key,
                            target_recall=0.95, overwrite=True, progress=False)  # fmt: skip
        (work / "build_s").write_text(f"{time.perf_counter() - t0:.1f}")
    return {"index_key": key, "build_s": float((work / "build_s").read_text())}


def exact_top_k(data: Path) -> np.ndarray:
    from coins.retrieval.shards import open_embeddings
    from coins.serve.index.stream import _TopK

    top = _TopK(np.load(data / "queries.npy"), K)
    for chunk in open_embeddings([data / "shard-00"]).chunks():
        top.update(np.asarray(chunk.vectors), chunk.ids, np.ones(len(chunk.ids), dtype=bool))
    return top.ids


def database(data: Path) -> tuple[np.ndarray, np.ndarray]:
    from coins.retrieval.shards import open_embeddings

    xb, ids = [], []
    for chunk in open_embeddings([data / "shard-00"]).chunks():
        xb.append(np.asarray(chunk.vectors, dtype=np.float32))
        ids.append(np.asarray(chunk.ids, dtype=np.int64))
    return np.concatenate(xb), np.concatenate(ids)


def recall(I: np.ndarray, gt: np.ndarray) -> float:  # noqa: E741 (FAISS's name)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(I, gt, strict=True))
    return hits / gt.size


def in_process(work: Path, xq: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """`SearchIndex.search` on one FAISS thread: recall, and per-call latency at batch 1, 16."""
    import faiss

    from coins.serve.index.store import SearchIndex

    faiss.omp_set_num_threads(1)
    index = SearchIndex.load(work / "index", mmap=True)
    _, I = index.search(xq, K)  # noqa: E741
    out: dict[str, Any] = {"params": index.manifest.index_params, "recall": recall(I, gt)}
    out["I"] = I
    times: list[float] = []
    for batch in (1, 16):
        for _ in range(2):  # the first pass touches the mapped lists
            times = []
            for s in range(0, len(xq) - batch + 1, batch):
                t = time.perf_counter()
                index.search(xq[s : s + batch], K)
                times.append(time.perf_counter() - t)
        ms = 1000 * np.asarray(times)
        out[f"batch{batch}"] = {
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "qps_one_thread": batch * len(ms) / (ms.sum() / 1000),
        }  # fmt: skip
    if PINNING:  # on the core the pinned servers get (`pinned_latency`)
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, SERVER_CORES)
        try:
            for _ in range(2):
                times = []
                for s in range(len(xq)):
                    t = time.perf_counter()
                    index.search(xq[s : s + 1], K)
                    times.append(time.perf_counter() - t)
        finally:
            os.sched_setaffinity(0, mask)
        out["batch1_pinned"] = {"p50_ms": float(np.percentile(1000 * np.asarray(times), 50))}
    return out


# ---- request bodies ---------------------------------------------------------------------------


def bodies(xq: np.ndarray, batch: int, encoding: str, whole: bool = False) -> list[str]:
    """One JSON request body per line: `batch` consecutive queries each, k 10 (and the last
    queries in a shorter one if `whole`)."""
    out = []
    for s in range(0, len(xq) - (0 if whole else batch - 1), batch):
        x = xq[s : s + batch]
        if encoding == "json":
            body: dict[str, Any] = {"vectors": x.tolist(), "k": K}
        elif encoding == "base64":
            body = {"vectors_base64": base64.b64encode(x.astype("<f4").tobytes()).decode(), "k": K}
        else:  # chroma
            body = {"query_embeddings": x.tolist(), "n_results": K,
                    "include": ["metadatas", "distances"]}  # fmt: skip
        out.append(json.dumps(body, separators=(",", ":")))
    return out


# ---- servers --------------------------------------------------------------------------------


class Server:
    """A server process on a free port; `pids()` are it and its children (uvicorn's workers)."""

    def __init__(self, cmd: list[str], url: str, ready: str, env: dict[str, str] | None = None):
        self.url, self.ready = url, ready
        fd, name = tempfile.mkstemp(prefix="bench-http-", suffix=".log")
        self.log = Path(name)
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **(env or {})}, stdout=fd, stderr=subprocess.STDOUT
        )
        os.close(fd)

    def wait(self, timeout: float, count: int = 1) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                up = httpx.get(self.url + self.ready, timeout=2).status_code == 200
                if up and (count == 1 or _ready_processes(self.url) >= count):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} not ready: {self.log.read_text()[-2000:]}")

    def pids(self) -> list[int]:
        pids, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            todo += [int(c) for c in children]
        return pids

    def cpu_s(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ready_processes(url: str) -> int:
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=5).text
    return len(re.findall(r"^coins_ready(\{[^}]*\})? 1\.0$", text, re.M))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def coins_server(work: Path, processes: int, checkout: Path | None) -> Server:
    """`coins serve --mmap` of this checkout, or of `checkout` imported in its place."""
    port = free_port()
    cmd = [sys.executable, "-m", "coins.cli", "serve", str(work / "index"),
           "--model", str(work / "data" / "model.onnx"), "--port", str(port),
           "--log-level", "warning", "--mmap", "--processes", str(processes)]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1"}
    if checkout is not None:
        shim = work / "baseline-path"
        shutil.rmtree(shim, ignore_errors=True)
        (shim / "uvloop").mkdir(parents=True)
        (shim / "coins").symlink_to(checkout.resolve())
        # the old commit did not declare uvloop: uvicorn's "auto" loop must not find it
        (shim / "uvloop" / "__init__.py").write_text("raise ImportError('hidden')\n")
        env["PYTHONPATH"] = str(shim)
    server = Server(cmd, f"http://127.0.0.1:{port}", "/readyz", env)
    server.wait(300, processes)
    return server


def chroma_server(work: Path, venv: Path) -> tuple[Server, str]:
    port = free_port()
    cmd = [str(venv / "bin" / "chroma"), "run", "--path", str(work / "chroma"),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = Server(cmd, f"http://127.0.0.1:{port}", "/api/v2/heartbeat")
    server.wait(600)
    import httpx

    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    found = httpx.get(f"{server.url}{base}/{CHROMA_COLLECTION}", timeout=30).json()
    return server, f"{base}/{found['id']}/query"


CHROMA_LOAD = """
import sys, time, numpy as np, chromadb
path, n = sys.argv[1], int(sys.argv[2])
xb, ids = np.load(path + "/xb.npy", mmap_mode="r"), np.load(path + "/ids.npy")
client = chromadb.PersistentClient(path=path)
col = client.create_collection("bench", configuration={"hnsw": {"space": "cosine",
    "max_neighbors": 16, "ef_construction": 100, "ef_search": 96}})
step, t0 = client.get_max_batch_size(), time.perf_counter()
for s in range(0, n, step):
    e = min(n, s + step)
    col.add(ids=[str(i) for i in ids[s:e]], embeddings=np.asarray(xb[s:e]),
            metadatas=[{"coarse": str(i % 10)} for i in ids[s:e]])
print(time.perf_counter() - t0)
"""


def chroma_prepare(work: Path, venv: Path) -> float:
    """Chroma's persistent folder of the same vectors (HNSW, cosine), made once; build s."""
    done = work / "chroma" / "build_s"
    if not done.exists():
        shutil.rmtree(work / "chroma", ignore_errors=True)
        (work / "chroma").mkdir()
        xb, ids = database(work / "data")
        np.save(work / "chroma" / "xb.npy", xb)
        np.save(work / "chroma" / "ids.npy", ids)
        del xb
        out = subprocess.run([str(venv / "bin" / "python"), "-c", CHROMA_LOAD,
                              str(work / "chroma"), str(len(ids))],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        done.write_text(out.strip().splitlines()[-1])
        for name in ("xb.npy", "ids.npy"):
            (work / "chroma" / name).unlink()
    return float(done.read_text())


# ---- load and recall --------------------------------------------------------------------------


def wrk(
    url: str, path: str, body_file: Path, connections: int, seconds: float, pin: bool = False
) -> dict[str, Any]:
    threads = min(connections, 2)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
           "--timeout", "10s", "-s", str(LUA), url + path, "--", str(body_file)]  # fmt: skip
    if pin:
        cmd = ["taskset", "-c", ",".join(map(str, sorted(CLIENT_CORES))), *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    figures |= {"threads": threads, "connections": connections, "duration_s": seconds}
    return figures


def load(server: Server, path: str, files: dict[int, Path], seconds: float,
         label: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """wrk at batch 1 and 16, 1 and 4 connections, after a short warm-up."""
    rows = []
    for batch, body_file in files.items():
        wrk(server.url, path, body_file, 2, min(2.0, seconds))  # warm-up
        for connections in (1, 4):
            load_avg = os.getloadavg()[0]
            cpu = server.cpu_s()
            w = wrk(server.url, path, body_file, connections, seconds)
            cpu = server.cpu_s() - cpu
            rps = w["requests"] / (w["duration_us"] / 1e6)
            cpu_ms = 1000 * cpu / max(1, w["requests"])
            row = {**label, "batch": batch, **w, "rps": round(rps, 1),
                   "qps": round(rps * batch, 1), "p50_ms": w["p50_us"] / 1000,
                   "p99_ms": w["p99_us"] / 1000, "load_avg": round(load_avg, 2),
                   "server_cpu_ms_per_request": round(cpu_ms, 3)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def pinned_latency(server: Server, path: str, body_file: Path, seconds: float,
                   label: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Batch 1, one connection, with the server's threads on one core and wrk on the others:
    on a 2-core machine shared by client and server, the nearest to a client on a second
    machine (no core or cache taken by wrk between two requests). The affinity is put back."""
    masks = {}
    for pid in server.pids():
        for t in map(int, os.listdir(f"/proc/{pid}/task")):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                masks[t] = os.sched_getaffinity(t)
                os.sched_setaffinity(t, SERVER_CORES)
    try:
        wrk(server.url, path, body_file, 1, min(2.0, seconds), pin=True)  # warm-up
        cpu = server.cpu_s()
        w = wrk(server.url, path, body_file, 1, seconds, pin=True)
        cpu = server.cpu_s() - cpu
    finally:
        for t, mask in masks.items():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(t, mask)
    rps = w["requests"] / (w["duration_us"] / 1e6)
    row = {**label, "batch": 1, "pinned": True, **w, "rps": round(rps, 1), "qps": round(rps, 1),
           "p50_ms": w["p50_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
           "server_cpu_ms_per_request": round(1000 * cpu / max(1, w["requests"]), 3)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def http_ids(url: str, path: str, xq: np.ndarray, encoding: str) -> np.ndarray:
    """The top-10 ids of every query through HTTP, 16 queries per request."""
    import httpx

    found = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for line in bodies(xq, 16, encoding, whole=True):
            r = http.post(path, content=line, headers={"Content-Type": "application/json"})
            r.raise_for_status()
            if encoding == "chroma":
                found += [[int(i) for i in row] for row in r.json()["ids"]]
            else:
                found += [[n["id"] for n in q["neighbors"]] for q in r.json()["results"]]
    return np.asarray(found, dtype=np.int64)


# ---- profile ----------------------------------------------------------------------------------

LAYERS = [  # (layer, substrings of a frame): a sample goes to its innermost frame that names one
    ("FAISS search", ("faiss/", "SearchIndex.search")),
    ("metadata lookup (SQLite)", ("MetadataStore", "_metadata (", "metadata_dict")),
    (
        "body: JSON parse and validation",
        ("model_validate_json", "parse_search", "parse_json_body", "from_base64", "pydantic"),
    ),
    ("vectors: check and normalise", ("normalise (", "norm (", "_linalg")),
    ("response: dicts and orjson", ("neighbor_rows", "_answer (", "result_rows", "orjson")),
    ("body limits and body read", ("limits.py", "Request.stream", "read_body")),
    ("metrics", ("observability.py", "prometheus_client")),
    ("search route (rest)", ("routes/search.py",)),
    ("thread hop to the pool", ("concurrent/futures", "in_pool", "futures.py", "_chain_future")),
    ("FastAPI/Starlette: middleware, routing", ("fastapi/", "starlette/", "contextlib")),
    ("uvicorn: HTTP parsing (httptools), send", ("uvicorn/", "httptools", "h11", "app.py")),
    ("event loop: asyncio tasks, uvloop (C)", ("asyncio/", "uvloop", "Runner.run")),
]
IDLE = ("_worker (concurrent/futures/thread.py", "Condition.wait", "select", "epoll")


def profile(
    work: Path, venv: Path, body_file: Path, seconds: float, checkout: Path | None = None
) -> dict[str, Any]:
    """py-spy samples of one server process (this checkout's, or `checkout`'s) under 1
    connection at batch 1, by layer."""
    server = coins_server(work, 1, checkout)
    try:
        raw = work / f"profile-{'base' if checkout else 'new'}.txt"
        spy = subprocess.Popen([str(venv / "bin" / "py-spy"), "record", "--pid",
                                str(server.proc.pid), "--format", "raw", "--rate", "1000",
                                "--duration", f"{seconds:g}", "--threads",
                                "--output", str(raw)], stdout=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1)
        wrk(server.url, "/v1/search", body_file, 1, seconds)
        spy.wait()
    finally:
        server.stop()
    return layers(raw.read_text())


def layers(collapsed: str) -> dict[str, Any]:
    """Share of the busy samples of each layer (py-spy's raw output: `frames count` lines)."""
    counts: dict[str, int] = {}
    idle = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if any(w in frames[-1] for w in IDLE):
            idle += int(n)
            continue
        layer = "other"
        for frame in reversed(frames):
            hit = next((name for name, keys in LAYERS if any(k in frame for k in keys)), None)
            if hit is not None:
                layer = hit
                break
        counts[layer] = counts.get(layer, 0) + int(n)
    busy = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    share = {k: round(v / busy, 3) for k, v in ranked}
    return {"busy_samples": busy, "idle_samples": idle, "share": share}


# ---- main -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="Cache of data, index, results.")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--index-key", default=None)
    p.add_argument("--seconds", type=float, default=10.0, help="wrk duration of each case.")
    p.add_argument("--baseline", type=Path, help="A worktree of the commit to compare with.")
    p.add_argument("--chroma", type=Path, help="A venv with chromadb (and py-spy).")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--profile", type=float, default=0, help="py-spy seconds (0: none).")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    info = prepare(a.work, a.n, a.index_key)
    xq = np.load(a.work / "data" / "queries.npy")
    gt = np.load(a.work / "gt.npy")
    local = in_process(a.work, xq, gt)
    I_local = local.pop("I")
    result: dict[str, Any] = {"n": a.n, **info, "in_process": local, "runs": [], "recall": {}}
    print(json.dumps(result), flush=True)
    files = {}
    for enc in ("json", "base64", "chroma"):
        for batch in (1, 16):
            f = a.work / f"bodies-{enc}-{batch}.txt"
            f.write_text("\n".join(bodies(xq, batch, enc)) + "\n")
            files[enc, batch] = f
    systems: list[tuple[str, Path | None, list[str]]] = [("new", None, ["json", "base64"])]
    if a.baseline is not None:
        systems.append(("base", a.baseline, ["json"]))
    for name, checkout, encodings in systems:
        for processes in a.processes:
            server = coins_server(a.work, processes, checkout)
            try:
                if processes == 1:
                    for enc in encodings:
                        I = http_ids(server.url, "/v1/search", xq, enc)  # noqa: E741
                        result["recall"][f"{name}-{enc}"] = {
                            "recall": recall(I, gt), "same_ids_as_in_process": bool(
                                np.array_equal(I, I_local))}  # fmt: skip
                for enc in encodings if processes == 1 else ["json"]:
                    label = {"system": name, "processes": processes, "encoding": enc}
                    cases = {b: files[enc, b] for b in (1, 16)}
                    result["runs"] += load(server, "/v1/search", cases, a.seconds, label)
                if processes == 1 and PINNING:
                    label = {"system": name, "processes": 1, "encoding": "json"}
                    result["runs"].append(pinned_latency(
                        server, "/v1/search", files["json", 1], a.seconds, label))  # fmt: skip
            finally:
                server.stop()
    if a.chroma is not None:
        result["chroma_build_s"] = chroma_prepare(a.work, a.chroma)
        server, path = chroma_server(a.work, a.chroma)
        try:
            I = http_ids(server.url, path, xq, "chroma")  # noqa: E741
            result["recall"]["chroma"] = {"recall": recall(I, gt)}
            label = {"system": "chroma", "processes": 1, "encoding": "json"}
            result["runs"] += load(server, path, {b: files["chroma", b] for b in (1, 16)},
                                   a.seconds, label)  # fmt: skip
            if PINNING:
                result["runs"].append(pinned_latency(
                    server, path, files["chroma", 1], a.seconds, label))  # fmt: skip
        finally:
            server.stop()
    if a.profile and a.chroma is not None:
        result["profile"] = {"new": profile(a.work, a.chroma, files["json", 1], a.profile)}
        if a.baseline is not None:
            result["profile"]["base"] = profile(
                a.work, a.chroma, files["json", 1], a.profile, a.baseline
            )
    (a.work / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
