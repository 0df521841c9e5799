"""The on-disk merge alone: `merge_blocks` (serve/index/merge.py) against FAISS's `merge_ondisk`.

    python benchmarks/bench_catalogue_index.py generate /tmp/cat1m --n 1000000 --folders 8
    python benchmarks/bench_merge.py /tmp/cat1m --nlist 1024

Prepares once (IVF trained on a sample of the shard folders' vectors, filled into block indexes
of `stream.BLOCK_VECTORS` vectors written to OUT/merge-bench), then merges them into an
`.ivfdata` file in a fresh process per merge, alternating the two, `--repeats` times each. Each
process reports its seconds and its peak RSS above what it held before the merge (VmHWM,
which counts resident pages of mapped files too); both merges write the same file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from coins.serve.index.merge import merge_blocks


def prepare(out: Path, nlist: int) -> None:
    """Train, fill the block indexes as an on-disk build does (`stream._Blocks`), and keep
    them in OUT/merge-bench with the trained index and their list sizes."""
    from coins.retrieval.shards import open_embeddings  # here: the merge processes stay small
    from coins.serve.index.stream import _Blocks

    work = out / "merge-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    embeddings = open_embeddings(sorted(out.glob("shard-*")))
    index = faiss.index_factory(embeddings.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(embeddings.sample(min(embeddings.count, 64 * nlist), 0))
    blocks = _Blocks(index, work / "unused.ivfdata", work / "unused.npy")  # never merged here
    faiss.write_index(index, str(work / "trained.faiss"))
    for chunk in embeddings.chunks():
        blocks.current().add_with_ids(np.asarray(chunk.vectors, np.float32), np.asarray(chunk.ids))
        blocks.maybe_flush()
    blocks.maybe_flush(force=True)
    for b, path in enumerate(blocks.files):
        Path(path).rename(work / f"block-{b:04d}.faiss")
    Path(blocks.folder).rmdir()
    np.save(work / "sizes.npy", np.stack(blocks.sizes))


def merge(work: Path, how: str) -> dict[str, float]:
    index = faiss.read_index(str(work / "trained.faiss"))
    blocks = sorted(str(p) for p in work.glob("block-*.faiss"))
    sizes = list(np.load(work / "sizes.npy"))
    out = work / f"{how}.ivfdata"
    before = _hwm()  # imports and the trained index
    t0 = time.perf_counter()
    if how == "blocks":
        merge_blocks(index, blocks, sizes, out)
    else:
        from faiss.contrib.ondisk import merge_ondisk

        merge_ondisk(index, blocks, str(out))
    seconds = time.perf_counter() - t0
    peak = _hwm()
    size = out.stat().st_size
    out.unlink()
    return {"seconds": round(seconds, 2), "peak_before_bytes": before,
            "peak_over_start_bytes": peak - before,
            "lists_bytes": size, "peak_over_lists": round((peak - before) / size, 3)}  # fmt: skip


def _hwm() -> int:
    """This process's peak RSS in bytes (VmHWM: anonymous and mapped file pages). Not
    ru_maxrss, which Linux carries over exec from the parent that started this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="Folder of shard-* folders (bench_catalogue_index).")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--merge", choices=["blocks", "faiss"], help=argparse.SUPPRESS)
    args = p.parse_args()
    work = args.out / "merge-bench"
    if args.merge:  # one merge in this process
        print(json.dumps(merge(work, args.merge)))
        return
    prepare(args.out, args.nlist)
    for _ in range(args.repeats):
        for how in ("blocks", "faiss"):
            cmd = [sys.executable, __file__, str(args.out), "--merge", how]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(how, line.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
