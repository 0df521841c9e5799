"""`coins embed` at scale: 1 vs 2 processes, peak memory per process, two simulated nodes.

On a gallery of generated 224-px JPEG photos (benchmarks/make_photos.py), with a small model
(a quarter-width ResNet-18 at 224 px, one training step: the speed, not the accuracy, matters):

1. `coins embed` with 1 process, then `--nproc 2`: images/s of each, their ratio, and the max
   abs difference of the vectors (same items, same order expected);
2. 1 process with 1 ONNX Runtime thread and no loader worker (on COUNT/4): the one-core bound;
3. peak RSS per process (each rank's own getrusage maxrss, from the job's log) at
   COUNT/4 and COUNT photos: a flat figure means memory is bounded by a chunk;
4. two node ranks on this host (`torchrun --nnodes 2 --node_rank 0/1 --rdzv-backend c10d
   --rdzv-endpoint 127.0.0.1:PORT`, both started here) into one folder: its items and vectors
   equal the single-process ones.

    .venv/bin/python benchmarks/bench_embed.py --photos /tmp/photos --count 20000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from coins.retrieval.shards import open_embeddings

PY = sys.executable


def ensure_photos(folder: Path, count: int) -> Path:
    if not (folder / "manifest.csv").exists():
        script = Path(__file__).with_name("make_photos.py")
        subprocess.run([PY, str(script), "--out", str(folder), "--count", str(count)], check=True)
    return folder


def ensure_model(photos: Path, work: Path) -> Path:
    """A small 224-px model: one training step of a quarter-width ResNet-18, exported."""
    onnx = work / "model.onnx"
    if onnx.exists():
        return onnx
    from coins.retrieval.onnx.export import export_checkpoint
    from coins.train import load_config, train

    cfg = load_config(
        preset="rgb-224", dataset="csv", root=str(photos / "manifest.csv"), max_steps=1,
        model={"backbone": "resnet18", "backbone_kwargs": {"channels": [16, 32, 64, 128]},
               "head_hidden": 64, "head_dim": 32},
        batch_size=8, num_workers=0, epochs=1, amp=False,
        val_fraction=0.02, eval_split="val",  # a small final evaluation: speed matters here
    )  # fmt: skip
    train(cfg, work / "run", progress=False)
    export_checkpoint(work / "run/checkpoint.pt", onnx)
    return onnx


def embed(model: Path, manifest: Path, out: Path, extra: list[str]) -> tuple[float, list[float]]:
    """Run `coins embed`; wall seconds and each process's peak RSS in MiB (from its log)."""
    cmd = [PY, "-m", "coins.cli", "embed", str(model), "--manifest", str(manifest), "-o", str(out)]
    start = time.perf_counter()
    done = subprocess.run([*cmd, *extra], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, peaks(done.stderr)


def peaks(log: str) -> list[float]:
    """The `peak RSS N MiB` of each rank's log (the loader workers, other processes, apart)."""
    return [float(m) for m in re.findall(r"peak RSS (\d+) MiB", log)]


def read(out: Path) -> tuple[np.ndarray, np.ndarray]:
    found = open_embeddings(out)
    chunks = list(found.chunks())
    return np.concatenate([c.ids for c in chunks]), np.concatenate([c.vectors for c in chunks])


def wait_for_load(below: float, minutes: float) -> float:
    """Poll the 1-minute load average every 60 s until it is below `below` (at most `minutes`);
    the load when timing starts."""
    deadline = time.monotonic() + 60 * minutes
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        print(f"load {os.getloadavg()[0]:.2f} >= {below}: waiting", file=sys.stderr, flush=True)
        time.sleep(60)
    return os.getloadavg()[0]


def subset_manifest(photos: Path, count: int, work: Path) -> Path:
    """The first `count` photos as one gallery: absolute paths, no `split` column."""
    with (photos / "manifest.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))[:count]
    path = work / f"manifest-{count}.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "coarse", "fine"])
        writer.writerows([str(photos / r["path"]), r["coarse"], r["fine"]] for r in rows)
    return path


def two_nodes(model: Path, manifest: Path, out: Path, extra: list[str], port: int) -> float:
    base = [PY, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]  # fmt: skip
    job = ["-m", "coins.cli", "embed", str(model), "--manifest", str(manifest), "-o", str(out)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*base, "--node_rank", str(r), *job, *extra], stderr=subprocess.DEVNULL)
        for r in (0, 1)
    ]
    assert all(p.wait() == 0 for p in procs), "a node failed"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=Path("/tmp/photos"))
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-embed"))
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--port", type=int, default=29533)
    parser.add_argument("--wait-load", type=float, default=0.0, help="minutes to wait for load<3")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    photos = ensure_photos(args.photos, args.count)
    model = ensure_model(photos, work)
    full = subset_manifest(photos, args.count, work)
    quarter = subset_manifest(photos, args.count // 4, work)
    chunk = ["--chunk-size", str(args.chunk_size)]
    res: dict[str, object] = {"count": args.count, "cores": os.cpu_count()}
    res["load_before"] = wait_for_load(3.0, args.wait_load)

    def run(name: str, manifest: Path, extra: list[str]) -> tuple[Path, float, list[float]]:
        out = work / f"{name}-{time.time_ns()}"
        seconds, rss = embed(model, manifest, out, [*chunk, *extra])
        print(f"{name}: {seconds:.1f} s, peak RSS {rss} MiB", file=sys.stderr, flush=True)
        return out, seconds, rss

    out1, t1, rss1 = run("one", full, [])
    out2, t2, rss2 = run("two", full, ["--nproc", "2"])
    _, t1c, _ = run("one-core", quarter, ["--threads", "1", "--workers", "0"])
    _, _, rss1q = run("one-quarter", quarter, [])
    _, _, rss2q = run("two-quarter", quarter, ["--nproc", "2"])
    (ids1, x1), (ids2, x2) = read(out1), read(out2)
    assert (ids1 == ids2).all()
    res |= {"ips_1proc": args.count / t1, "ips_2proc": args.count / t2, "ratio_2_over_1": t1 / t2,
            "ips_1proc_1thread_0workers": args.count // 4 / t1c,
            "max_abs_diff_2proc": float(np.abs(x1 - x2).max()),
            f"rss_mib_1proc_{args.count // 4}": rss1q, f"rss_mib_1proc_{args.count}": rss1,
            f"rss_mib_2proc_{args.count // 4}": rss2q, f"rss_mib_2proc_{args.count}": rss2,
            "load_after_scaling": os.getloadavg()[0]}  # fmt: skip
    nodes = work / f"nodes-{time.time_ns()}"
    res["ips_two_nodes"] = args.count / two_nodes(model, full, nodes, chunk, args.port)
    ids_n, x_n = read(nodes)
    res["nodes_same_ids"] = bool((ids_n == ids1).all())
    res["nodes_max_abs_diff"] = float(np.abs(x_n - x1).max())
    res["load_after"] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
