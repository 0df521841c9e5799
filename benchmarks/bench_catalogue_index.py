"""A catalogue-sized index from shards: build memory and time, recall, mmap open time, latency.

    python benchmarks/bench_catalogue_index.py generate /tmp/cat10m --n 10000000 --folders 8
    /usr/bin/time -v python benchmarks/bench_catalogue_index.py build /tmp/cat10m \
        --type IVF4096,Flat --on-disk
    python benchmarks/bench_catalogue_index.py measure /tmp/cat10m

Data: 128-d unit vectors around n // 100 shared random centres (Gaussian noise of norm ~0.6, as
benchmarks/bench_index.py), written as `--folders` `coins embed` v2 folders of 250,000-vector
chunks with minimal metadata rows; 1,000 query vectors from the same centres are kept apart.
`measure` computes their exact 10 neighbours chunk by chunk, then loads the index memory-mapped
and reports 10-recall@10 at the tuned nprobe and one-query latency on one thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from coins.retrieval.shards import job_manifest, open_embeddings, prepare_output, write_chunk
from coins.serve.index.build import build_gallery_index, build_summary
from coins.serve.index.store import SearchIndex
from coins.serve.index.stream import _TopK
from coins.serve.index.tuning import k_recall

D = 128
SIGMA = 0.6
CHUNK = 250_000
NQ = 1000


def _points(centres: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((m, D), dtype=np.float32) * (SIGMA / np.sqrt(D))
    x = centres[rng.integers(0, len(centres), m)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def export_tiny(path: Path) -> str:
    """A tiny ONNX model with 128-d outputs, so that `coins serve` accepts the index; its
    sha256, which the shards record."""
    import torch

    from coins.retrieval.models import Embedder, EmbedderConfig
    from coins.retrieval.onnx.export import export_model
    from coins.retrieval.onnx.runner import OnnxEmbedder

    torch.manual_seed(0)
    config = {"backbone_kwargs": {"channels": [8, 16, 16, D]}, "head_hidden": 16,
              "head_dim": 8, "preprocess": {"input_size": 16}}  # fmt: skip
    export_model(Embedder(EmbedderConfig.from_dict(config)).eval(), path, "backbone", None, "coins")
    embedder = OnnxEmbedder(path)
    assert embedder.dim == D, embedder.dim
    return embedder.sha256


def generate(out: Path, n: int, folders: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = export_tiny(out / "model.onnx")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, n // 100), D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    np.save(out / "queries.npy", _points(centres, NQ, np.random.default_rng(1)))
    per = -(-n // folders)
    t0 = time.perf_counter()
    for f in range(folders):
        job = out / f"shard-{f:02d}"
        job.mkdir(exist_ok=True)
        items = min(per, n - f * per)
        manifest = job_manifest(
            model_sha256=model, dim=D, which="embedding", preprocess={}, id_scheme="column",
            source={"kind": "synthetic", "folder": f}, items=items, chunk_size=CHUNK,
        )  # fmt: skip
        prepare_output(job, manifest)
        for c, s in enumerate(range(0, items, CHUNK)):
            m = min(CHUNK, items - s)
            first = f * per + s
            x = _points(centres, m, np.random.default_rng([2, f, c]))
            rows = [{"id": i, "coarse": str(i % 10)} for i in range(first, first + m)]
            write_chunk(job, c, x.astype(np.float32), rows, [], model)
        print(f"{job}: {items:,} vectors ({time.perf_counter() - t0:.0f} s)", flush=True)


class PeakMemory:
    """Peak anonymous and file-backed resident memory of this process, sampled every 0.2 s
    (/proc/self/status RssAnon, RssFile): mapped shard and list files count in RSS while
    their pages are resident, though the kernel can drop them at will."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.base = self.sample()
        threading.Thread(target=self._run, daemon=True).start()

    def sample(self) -> dict[str, int]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in self.peak:
                fields[name] = int(value.split()[0]) * 1024
        return fields

    def _run(self) -> None:
        while True:
            for name, value in self.sample().items():
                self.peak[name] = max(self.peak[name], value)
            time.sleep(0.2)


def build(out: Path, key: str, on_disk: bool, recall: float, name: str) -> None:
    folders = sorted(out.glob("shard-*"))
    memory = PeakMemory()
    t0 = time.perf_counter()
    index, _ = build_gallery_index(
        out / name, from_embeddings=folders, index_key=key, on_disk=on_disk,
        target_recall=recall, overwrite=True, log=lambda line: print(line, flush=True),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    size = sum(f.bytes for f in index.manifest.files.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary, _ = build_summary(index)
    figures = {
        "vectors": index.ntotal, "build_s": round(seconds, 1),
        "build_s_per_million": round(seconds / (index.ntotal / 1e6), 1),
        "index_bytes": size, "peak_rss_bytes": peak, "rss_over_size": round(peak / size, 3),
        "peak_anon_bytes": memory.peak["RssAnon"], "peak_file_bytes": memory.peak["RssFile"],
        "anon_at_start_bytes": memory.base["RssAnon"],
        "anon_over_size": round(memory.peak["RssAnon"] / size, 3),
    }  # fmt: skip
    print(summary)
    print(json.dumps(figures))


def measure(out: Path, name: str, queries: int) -> None:
    xq = np.load(out / "queries.npy")[:queries]
    t0 = time.perf_counter()
    top = _TopK(xq, 10)
    for chunk in open_embeddings(sorted(out.glob("shard-*"))).chunks():
        top.update(np.asarray(chunk.vectors), chunk.ids, np.ones(len(chunk.ids), dtype=bool))
    gt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = SearchIndex.load(out / name, mmap=True)
    open_s = time.perf_counter() - t0
    recall = k_recall(index.search(xq, 10)[1], top.ids)
    faiss.omp_set_num_threads(1)
    times = []
    for i in range(len(xq)):
        t = time.perf_counter()
        index.search(xq[i : i + 1], 10)
        times.append(1000 * (time.perf_counter() - t))
    figures = {
        "ground_truth_s": round(gt_s, 1), "open_mmap_s": round(open_s, 2),
        "recall_10_at_10": round(recall, 4), "params": index.manifest.index_params,
        "p50_ms_one_thread": round(float(np.percentile(times[10:], 50)), 3),
        "p99_ms_one_thread": round(float(np.percentile(times[10:], 99)), 3),
    }  # fmt: skip
    print(json.dumps(figures))


def serve(out: Path, name: str) -> None:
    """Seconds from starting `coins serve --mmap` to its first 200 on /readyz."""
    from coins.serve.client.background import start_server, stop_server

    model = out / "model.onnx"
    t0 = time.perf_counter()
    proc, _ = start_server(out / name, model, "--mmap", timeout=300)
    ready = time.perf_counter() - t0
    stop_server(proc)
    print(json.dumps({"serve_ready_s_mmap": round(ready, 2)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["generate", "build", "measure", "serve"])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--folders", type=int, default=8)
    p.add_argument("--type", default="auto")
    p.add_argument("--on-disk", action="store_true")
    p.add_argument("--recall", type=float, default=0.92)
    p.add_argument("--index", default="index", help="Index folder name inside OUT.")
    p.add_argument("--queries", type=int, default=NQ, help="measure: this many of the queries")
    a = p.parse_args()
    if a.step == "generate":
        generate(a.out, a.n, a.folders)
    elif a.step == "build":
        build(a.out, a.type, a.on_disk, a.recall, a.index)
    elif a.step == "measure":
        measure(a.out, a.index, a.queries)
    else:
        serve(a.out, a.index)


if __name__ == "__main__":
    main()
