"""The peers of bench_filters.py, run by the Python of their own venv (never the project's):
Chroma (`chromadb`, an embedded PersistentClient: its HNSW with a metadata pre-filter) and
LanceDB (`lancedb`: IVF-PQ with a pre-filter, scalar indexes on the fields, refine), each
filtered search on the same vectors, fields, filters and exact ground truth; LanceDB also
without a vector index ("lancedb exact": the pre-filtered rows scanned exactly).

    /tmp/peers-venv/bin/python benchmarks/bench_filters_peers.py DATA_DIR WORK_DIR

DATA_DIR holds xb.npy, xq.npy, price.npy, brand.npy, in_stock.npy and filters.json (written by
bench_filters.py). Prints progress on stderr and one JSON line on stdout; WORK_DIR/peers.json
holds the engines done so far. Each engine measures a filter's queries until FILTER_SECONDS
are spent (`queries` says how many).
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

LANCE_PARTITIONS = 256  # sqrt(n) would be 1,000 at 1M: fewer train faster, nprobes reach more
LANCE_NPROBES = 32
LANCE_REFINE = 10
FILTER_SECONDS = 60.0  # per engine and filter: queries stop once this much time is spent


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def brand(b: int) -> str:
    return f"brand{b:04d}"


def run_chroma(data: dict[str, Any], work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import chromadb

    client = chromadb.PersistentClient(path=str(work / "chroma"))
    col = client.create_collection("items", metadata={"hnsw:space": "ip"})
    xb, f = data["xb"], data
    batch = client.get_max_batch_size()
    t = time.perf_counter()
    for s in range(0, len(xb), batch):
        e = min(len(xb), s + batch)
        col.add(
            ids=[str(i) for i in range(s, e)],
            embeddings=xb[s:e],
            metadatas=[
                {"price": float(f["price"][i]), "brand": brand(int(f["brand"][i])),
                 "in_stock": bool(f["in_stock"][i])}
                for i in range(s, e)
            ],
        )  # fmt: skip
    build_s = time.perf_counter() - t
    say(f"chroma: added {len(xb):,} in {build_s:.0f} s")

    def query(q: np.ndarray, where: Any, k: int) -> list[int]:
        r = col.query(query_embeddings=[q], n_results=k, where=where, include=[])
        return [int(i) for i in r["ids"][0]]

    rows = measure(data, lambda q, filt, k: query(q, filt["chroma"], k))
    return rows, {"build_s": build_s, "settings": "defaults, hnsw:space ip"}


def run_lance(
    data: dict[str, Any], work: Path, indexed: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """LanceDB with an IVF-PQ index (`indexed`), or without: an exact scan of the rows the
    pre-filter keeps."""
    import lancedb
    import pyarrow as pa

    xb, f = data["xb"], data
    d = xb.shape[1]
    table = pa.table(
        {
            "id": pa.array(np.arange(len(xb), dtype=np.int64)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), d),
            "price": pa.array(f["price"]),
            "brand": pa.array([brand(int(b)) for b in f["brand"]]),
            "in_stock": pa.array(f["in_stock"]),
        }
    )
    db = lancedb.connect(str(work / ("lance" if indexed else "lance-flat")))
    t = time.perf_counter()
    tbl = db.create_table("items", data=table, mode="overwrite")
    partitions = min(LANCE_PARTITIONS, max(1, len(xb) // 256))
    if indexed:
        tbl.create_index(metric="dot", num_partitions=partitions, num_sub_vectors=d // 8)
    for column, kind in (("brand", "BITMAP"), ("in_stock", "BITMAP"), ("price", "BTREE")):
        tbl.create_scalar_index(column, index_type=kind)
    build_s = time.perf_counter() - t
    say(f"lancedb: table and indexes in {build_s:.0f} s")

    def query(q: np.ndarray, where: str, k: int) -> list[int]:
        s = tbl.search(q).metric("dot").where(where, prefilter=True)
        if indexed:
            s = s.nprobes(LANCE_NPROBES).refine_factor(LANCE_REFINE)
        return [int(i) for i in s.limit(k).select(["id"]).to_arrow()["id"].to_pylist()]

    rows = measure(data, lambda q, filt, k: query(q, filt["lance"], k))
    vectors = (
        f"IVF{partitions}_PQ{d // 8}, nprobes {LANCE_NPROBES}, refine_factor {LANCE_REFINE}"
        if indexed
        else "no vector index (exact scan)"
    )
    settings = f"{vectors}, prefilter, scalar indexes (brand, in_stock bitmap, price btree)"
    return rows, {"build_s": build_s, "settings": settings}


def measure(data: dict[str, Any], search: Any) -> list[dict[str, Any]]:
    k = data["k"]
    out = []
    for filt, gt in zip(data["filters"], data["gt"], strict=True):
        ms, hits = [], []
        for q, g in zip(data["xq"], gt, strict=True):
            t = time.perf_counter()
            found = search(q, filt, k)
            ms.append(1e3 * (time.perf_counter() - t))
            hits.append(len(set(found) & set(g)) / len(g))
            if sum(ms) > 1e3 * FILTER_SECONDS:
                break
        row = {
            "filter": filt["name"],
            "queries": len(ms),
            "recall": float(np.mean(hits)),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }
        say(json.dumps(row))
        out.append(row)
    return out


def main() -> None:
    data_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    spec = json.loads((data_dir / "filters.json").read_text())
    data: dict[str, Any] = {name: np.load(data_dir / f"{name}.npy")
                            for name in ("xb", "xq", "price", "brand", "in_stock")}  # fmt: skip
    data |= spec
    result: dict[str, Any] = {"engines": [], "versions": {}, "config": {}}
    engines = (  # a run cut short keeps those done: LanceDB's IVF-PQ training last
        ("lancedb exact", lambda data, work: run_lance(data, work, indexed=False), "lancedb"),
        ("chroma", run_chroma, "chromadb"),
        ("lancedb", run_lance, "lancedb"),
    )
    for engine, run, package in engines:
        rows, config = run(data, work)
        result["engines"].append(engine)
        result[engine] = rows
        result["config"][engine] = config
        result["versions"][engine] = metadata.version(package)
        (work / "peers.json").write_text(json.dumps(result))  # so far
    print(json.dumps(result))


if __name__ == "__main__":
    main()
