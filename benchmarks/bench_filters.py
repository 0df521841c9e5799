"""Filtered search: 10-recall@10 against the exact filtered top 10, and latency, at selectivity
50 %, 10 %, 1 % and 0.1 %: `SearchIndex.search(..., filter=)` (the filter compiled to SQL over
the metadata, its ids an id selector inside FAISS, or an exact search over them when few),
post-filtering an unfiltered top 100 (10 k) beside it, and, in the same run on the same data,
Chroma's and LanceDB's filtered search (bench_filters_peers.py, run by another Python: the
peers live in their own venv, never in the project's).

Data: bench_index.clustered (128-d, unit norm, n / 100 centres), with fields price (float,
uniform 0..100), brand (string, one of 1,000, uniform) and in_stock (bool, half). Filters:
50 % in_stock = true (match value, bool); 10 % price < 10 (range); 1 % brand any of 10 (any);
0.1 % brand = one (match value). Latency: one query per call, one thread (FAISS and the peers),
p50 / p99 over the queries. `coins` compiles the filter every query; its ids are read from
SQLite by the first query of a filter ("first query", the cold cost) and kept by
`SearchIndex.select` until the next add or remove, so the p50 / p99 of the later queries are
those of a filter repeated.

    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install chromadb lancedb
    nice -n 5 .venv/bin/python benchmarks/bench_filters.py --n 100000          # small first
    nice -n 5 .venv/bin/python benchmarks/bench_filters.py --n 1000000 --out docs/filters-1m.json
"""

# ruff: noqa: E741

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_index import clustered  # the benchmarks' shared data

BRANDS = 1000
K = 10
POST_FETCH = 100  # post-filtering keeps the matching ones of an unfiltered top 100


def fields(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "price": np.round(rng.uniform(0, 100, n), 2),
        "brand": rng.integers(0, BRANDS, n),
        "in_stock": rng.random(n) < 0.5,
    }


def brand(b: int) -> str:
    return f"brand{b:04d}"


def filters(f: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each filter in the three dialects, with its numpy mask."""
    ten = list(range(0, BRANDS, BRANDS // 10))  # 10 brands
    return [
        {
            "name": "50 %: in_stock = true",
            "coins": {"must": [{"key": "in_stock", "match": {"value": True}}]},
            "mask": f["in_stock"],
            "chroma": {"in_stock": True},
            "lance": "in_stock = true",
        },
        {
            "name": "10 %: price < 10",
            "coins": {"must": [{"key": "price", "range": {"lt": 10}}]},
            "mask": f["price"] < 10,
            "chroma": {"price": {"$lt": 10.0}},
            "lance": "price < 10",
        },
        {
            "name": "1 %: brand any of 10",
            "coins": {"must": [{"key": "brand", "match": {"any": [brand(b) for b in ten]}}]},
            "mask": np.isin(f["brand"], ten),
            "chroma": {"brand": {"$in": [brand(b) for b in ten]}},
            "lance": "brand IN (" + ", ".join(f"'{brand(b)}'" for b in ten) + ")",
        },
        {
            "name": "0.1 %: brand = one",
            "coins": {"must": [{"key": "brand", "match": {"value": brand(7)}}]},
            "mask": f["brand"] == 7,
            "chroma": {"brand": brand(7)},
            "lance": f"brand = '{brand(7)}'",
        },
    ]


def exact_filtered(xq: np.ndarray, xb: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Ids (positions) [nq, k] of the exact top k among xb[mask] (assumed not empty)."""
    ids = np.flatnonzero(mask)
    S = xq @ xb[ids].T  # [nq, m]
    k = min(k, len(ids))  # fewer items than k match: all of them
    top = np.argpartition(-S, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(S, top, axis=1).argsort(axis=1)[:, ::-1]
    return ids[np.take_along_axis(top, order, axis=1)]


def recall(found: list[list[int]], gt: np.ndarray) -> float:
    hits = [len(set(f) & set(g.tolist())) / len(g) for f, g in zip(found, gt, strict=True)]
    return float(np.mean(hits))


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run_coins(index: Any, xq: np.ndarray, filt: dict, mask: np.ndarray) -> dict[str, Any]:
    found, ms, post_found, post_ms = [], [], [], []
    for q in xq:
        t = time.perf_counter()
        _, I = index.search(q[None], K, filter=filt["coins"])
        ms.append(1e3 * (time.perf_counter() - t))
        found.append([int(i) for i in I[0] if i >= 0])
        t = time.perf_counter()
        _, I = index.search(q[None], POST_FETCH)  # post-filter: unfiltered, then keep matches
        kept = [int(i) for i in I[0] if i >= 0 and mask[i]][:K]
        post_ms.append(1e3 * (time.perf_counter() - t))
        post_found.append(kept)
    selected = index.select(filt["coins"])
    assert np.array_equal(selected, np.flatnonzero(mask)), "the filter selects other ids"
    return {"found": found, "ms": ms, "post_found": post_found, "post_ms": post_ms}


def tiny_model(work: Path, dim: int) -> Path:
    """A tiny random ONNX model giving `dim`-d vectors: the server needs one; vector queries
    never run it."""
    import torch

    from coins.retrieval.models import Embedder, EmbedderConfig
    from coins.retrieval.onnx.export import export_model

    torch.manual_seed(0)
    config = {"backbone_kwargs": {"channels": [8, 16, 16, 32]}, "head_hidden": 16,
              "head_dim": dim, "preprocess": {"input_size": 16}}  # fmt: skip
    path = work / "tiny.onnx"
    export_model(Embedder(EmbedderConfig.from_dict(config)).eval(), path)
    return path


def run_http(
    index_dir: Path, model: Path, xq: np.ndarray, filt: dict, gt: np.ndarray, in_process: list
) -> dict[str, Any]:
    """The same filtered queries through `coins serve` (one connection, one query a request, a
    JSON body): latency, recall, and whether every answer equals the in-process one."""
    import httpx

    from coins.serve.client.background import start_server, stop_server

    proc, url = start_server(index_dir, model, "--workers", "1", "--threads", "1", timeout=600)
    try:
        found, ms = [], []
        with httpx.Client(base_url=url, timeout=60) as http:
            for q in xq:
                body = {"vectors": [q.tolist()], "k": K, "filter": filt}
                t = time.perf_counter()
                r = http.post("/v1/search", json=body)
                ms.append(1e3 * (time.perf_counter() - t))
                r.raise_for_status()
                found.append([n["id"] for n in r.json()["results"][0]["neighbors"]])
    finally:
        stop_server(proc)
    return {
        "http_recall": recall(found, gt),
        "http_same_as_in_process": found == in_process,
        "http_first_ms": ms[0],
        "http_p50_ms": percentiles(ms[1:])[0],
        "http_p99_ms": percentiles(ms[1:])[1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--nq", type=int, default=100)
    p.add_argument("--index", default="IVF1024,Flat", help="FAISS factory string or coins kind")
    p.add_argument("--peers-python", default="/tmp/peers-venv/bin/python", help="'' skips peers")
    p.add_argument("--peers-until", default=None, help="HH:MM UTC: stop the peers then")
    p.add_argument("--work", type=Path, default=None, help="folder for the indexes (temporary)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument(
        "--http", action="store_true", help="also through `coins serve` (POST /v1/search)"
    )
    args = p.parse_args()

    import faiss

    from coins.retrieval.onnx.contract import model_sha256
    from coins.serve.index.build import build_index
    from coins.serve.index.filtered import plan
    from coins.serve.index.store import SearchIndex

    faiss.omp_set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-filters-"))
    xb, xq = clustered(args.n, args.nq)
    f = fields(args.n)
    ids = np.arange(args.n, dtype=np.int64)
    rows = [
        {"id": i, "price": float(p), "brand": brand(int(b)), "in_stock": bool(s)}
        for i, p, b, s in zip(range(args.n), f["price"], f["brand"], f["in_stock"], strict=True)
    ]
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build on every core
    t = time.perf_counter()
    model = tiny_model(work, xb.shape[1]) if args.http else None
    sha = None if model is None else model_sha256(model)
    build_index(ids, xb, rows, work / "coins", index_key=args.index, model_sha256=sha)
    build_s = time.perf_counter() - t
    del rows
    faiss.omp_set_num_threads(1)
    index = SearchIndex.load(work / "coins")
    print(f"coins: built {index.manifest.index_key} {index.manifest.index_params} "
          f"in {build_s:.0f} s", flush=True)  # fmt: skip

    m = index.manifest
    results: dict[str, Any] = {"n": args.n, "nq": args.nq, "k": K, "index": m.index_key,
                               "index_params": m.index_params, "build_s": build_s,
                               "filters": []}  # fmt: skip
    gts, found_in_process = [], []
    for filt in filters(f):
        gt = exact_filtered(xq, xb, filt["mask"], K)
        gts.append(gt.tolist())
        r = run_coins(index, xq, filt, filt["mask"])
        row = {
            "filter": filt["name"],
            "selectivity": float(filt["mask"].mean()),
            "matching": int(filt["mask"].sum()),
            "plan": plan(index.index, int(filt["mask"].sum())).strategy,
            "coins_recall": recall(r["found"], gt),
            "coins_first_ms": r["ms"][0],
            "coins_p50_ms": percentiles(r["ms"][1:])[0],
            "coins_p99_ms": percentiles(r["ms"][1:])[1],
            "post_recall": recall(r["post_found"], gt),
            "post_short": float(np.mean([len(x) < K for x in r["post_found"]])),
            "post_p50_ms": percentiles(r["post_ms"])[0],
            "post_p99_ms": percentiles(r["post_ms"])[1],
        }
        results["filters"].append(row)
        found_in_process.append(r["found"])
        print(json.dumps(row), flush=True)
    if model is not None:
        for row, filt, gt, found in zip(results["filters"], filters(f), gts, found_in_process,
                                        strict=True):  # fmt: skip
            row |= run_http(work / "coins", model, xq, filt["coins"], np.array(gt), found)
            print(json.dumps(row), flush=True)

    if args.out:  # coins' figures, whatever happens to the peers
        args.out.write_text(json.dumps(results, indent=1))
    if args.peers_python:
        data = work / "peers-data"
        data.mkdir(exist_ok=True)
        np.save(data / "xb.npy", xb)
        np.save(data / "xq.npy", xq)
        for name, values in f.items():
            np.save(data / f"{name}.npy", values)
        spec = [{k: v for k, v in filt.items() if k in ("name", "chroma", "lance")}
                for filt in filters(f)]  # fmt: skip
        (data / "filters.json").write_text(json.dumps({"filters": spec, "gt": gts, "k": K}))
        peers = Path(__file__).with_name("bench_filters_peers.py")
        timeout = None
        if args.peers_until:
            until = datetime.datetime.combine(
                datetime.datetime.now(datetime.timezone.utc).date(),
                datetime.time.fromisoformat(args.peers_until),
                datetime.timezone.utc,
            )
            timeout = (until - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        try:
            out = subprocess.run(
                [args.peers_python, str(peers), str(data), str(work / "peers")],
                capture_output=True, text=True, timeout=timeout,
                env={**os.environ, "RUST_LOG": "error", "LANCE_LOG": "error"},
            )  # fmt: skip
            sys.stderr.write(out.stderr[-4000:])
            if out.returncode != 0:
                print(f"peers failed (exit {out.returncode})")
        except subprocess.TimeoutExpired:
            print(f"peers stopped at {args.peers_until} UTC: the engines done so far")
        done = work / "peers" / "peers.json"
        if done.exists():
            results["peers"] = json.loads(done.read_text())
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def table(r: dict[str, Any]) -> str:
    engines = r.get("peers", {}).get("engines", [])
    lines = [
        f"n = {r['n']:,}, {r['nq']} queries, k = {r['k']}, coins {r['index']} "
        f"{r['index_params']}; latency: one query per call, one thread",
        "",
        "| filter | matching | coins plan | coins 10-recall@10 | coins first query ms "
        "| coins p50 / p99 ms "
        "| post-filter top 100: recall, short | post p50 ms |"
        + "".join(f" {p} recall | {p} p50 / p99 ms |" for p in engines),
        "|---|---:|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(engines),
    ]  # fmt: skip
    for i, row in enumerate(r["filters"]):
        line = (
            f"| {row['filter']} | {row['matching']:,} | {row['plan']} | {row['coins_recall']:.3f} "
            f"| {row['coins_first_ms']:.1f} "
            f"| {row['coins_p50_ms']:.2f} / {row['coins_p99_ms']:.2f} "
            f"| {row['post_recall']:.3f}, {100 * row['post_short']:.0f} % "
            f"| {row['post_p50_ms']:.2f} |"
        )
        if "http_p50_ms" in row:
            line += (
                f" HTTP: recall {row['http_recall']:.3f}, first {row['http_first_ms']:.1f} ms, "
                f"p50 / p99 {row['http_p50_ms']:.2f} / {row['http_p99_ms']:.2f} ms, the "
                f"in-process ids: {'yes' if row['http_same_as_in_process'] else 'NO'} |"
            )
        for engine in engines:
            pr = r["peers"][engine][i]
            line += f" {pr['recall']:.3f} | {pr['p50_ms']:.1f} / {pr['p99_ms']:.1f} |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
