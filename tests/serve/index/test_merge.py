"""merge_blocks against FAISS's own merge_ondisk: the same file, byte for byte."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from faiss.contrib.ondisk import merge_ondisk

from coins.serve.index.merge import list_sizes, merge_blocks
from coins.serve.index.tuning import ivf_of

D = 16


def blocks(key: str, tmp: Path, sizes: tuple[int, ...]) -> tuple[faiss.Index, list[str], list]:
    """A trained empty index of `key` and block files of `sizes` random vectors (one empty)."""
    rng = np.random.default_rng(0)
    trained = faiss.index_factory(D, key, faiss.METRIC_INNER_PRODUCT)
    trained.train(rng.standard_normal((1000, D)).astype(np.float32))
    files, counts, first = [], [], 0
    for b, n in enumerate(sizes):
        block = faiss.clone_index(trained)
        block.add_with_ids(
            rng.standard_normal((n, D)).astype(np.float32), np.arange(first, first + n) * 7 + 3
        )
        first += n
        files.append(str(tmp / f"block-{b}.faiss"))
        faiss.write_index(block, files[-1])
        counts.append(list_sizes(block))
    return trained, files, counts


@pytest.mark.parametrize("key", ["IVF16,Flat", "IVF8,PQ4x4", "OPQ4,IVF8,PQ4x4"])
def test_merge_blocks_writes_what_faiss_merge_ondisk_writes(key: str, tmp_path: Path) -> None:
    trained, files, counts = blocks(key, tmp_path, (300, 0, 1, 457))
    ours, theirs = faiss.clone_index(trained), faiss.clone_index(trained)
    merge_blocks(ours, files, counts, tmp_path / "ours.ivfdata")
    merge_ondisk(theirs, files, str(tmp_path / "theirs.ivfdata"))
    assert ours.ntotal == theirs.ntotal == 758
    mine, ref = ivf_of(ours).invlists, ivf_of(theirs).invlists
    for j in range(ref.nlist):
        assert mine.list_size(j) == ref.list_size(j)
    data = (tmp_path / "ours.ivfdata").read_bytes()
    assert data == (tmp_path / "theirs.ivfdata").read_bytes()
    xq = np.random.default_rng(1).standard_normal((20, D)).astype(np.float32)
    ivf_of(ours).nprobe = ivf_of(theirs).nprobe = 4
    for a, b in zip(ours.search(xq, 10), theirs.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    path = tmp_path / "ours.faiss"  # and it saves and loads as an on-disk index
    faiss.write_index(ours, str(path))
    again = faiss.read_index(str(path))  # on-disk lists are mapped (no IO_FLAG_MMAP: it crashes)
    ivf_of(again).nprobe = 4
    np.testing.assert_array_equal(again.search(xq, 10)[1], theirs.search(xq, 10)[1])


def test_merge_blocks_refuses_a_filled_index_and_mismatched_sizes(tmp_path: Path) -> None:
    trained, files, counts = blocks("IVF8,Flat", tmp_path, (50, 60))
    full = faiss.read_index(files[0])
    with pytest.raises(ValueError, match="needs an empty index, this one holds 50"):
        merge_blocks(full, files, counts, tmp_path / "x.ivfdata")
    with pytest.raises(ValueError, match="2 block files but 1 lists of list sizes"):
        merge_blocks(faiss.clone_index(trained), files, counts[:1], tmp_path / "y.ivfdata")
    with pytest.raises(ValueError, match="need an IVF index, not IndexFlat"):
        merge_blocks(faiss.IndexFlat(D), files, counts, tmp_path / "z.ivfdata")
