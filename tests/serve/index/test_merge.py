"""merge_blocks against FAISS's own merge_ondisk: the same file, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
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


def many_list_blocks(tmp: Path, nlist: int, sizes: tuple[int, ...]) -> tuple[faiss.Index, list]:
    """An IVF,Flat of `nlist` random centroids (set, not trained: k-means at thousands of lists
    is slow) and block files of `sizes` random vectors with distinct ids."""
    rng = np.random.default_rng(nlist)
    quantizer = faiss.IndexFlatIP(D)
    quantizer.add(rng.standard_normal((nlist, D)).astype(np.float32))
    trained = faiss.IndexIVFFlat(quantizer, D, nlist, faiss.METRIC_INNER_PRODUCT)
    trained.is_trained = True
    trained.this.disown()  # below: clones own their own quantizer
    files, counts, first = [], [], 0
    for b, n in enumerate(sizes):
        block = faiss.clone_index(trained)
        xb = rng.standard_normal((n, D)).astype(np.float32)
        block.add_with_ids(xb, np.arange(first, first + n))
        first += n
        files.append(str(tmp / f"block-{b}.faiss"))
        faiss.write_index(block, files[-1])
        counts.append(list_sizes(block))
    return faiss.clone_index(trained), files, counts


def list_ids(invlists, j: int) -> np.ndarray:
    n = invlists.list_size(j)
    if not n:
        return np.empty(0, np.int64)
    ptr = invlists.get_ids(j)
    ids = faiss.rev_swig_ptr(ptr, n).copy()
    invlists.release_ids(j, ptr)
    return ids


def check_merge_at_many_lists(tmp: Path, nlist: int) -> None:
    """Every list of the merged index has the summed size of its blocks' lists and their ids,
    in block order."""
    empty, files, counts = many_list_blocks(tmp, nlist, (9000, 1, 7000))
    merge_blocks(empty, files, counts, tmp / "lists.ivfdata")
    assert empty.ntotal == 16001
    merged = ivf_of(empty).invlists
    expected = [[] for _ in range(nlist)]
    for path in files:
        block = faiss.read_index(path)  # held: its lists die with it
        for j in range(nlist):
            expected[j].append(list_ids(ivf_of(block).invlists, j))
    for j in range(nlist):
        np.testing.assert_array_equal(list_ids(merged, j), np.concatenate(expected[j]))


@pytest.mark.parametrize("nlist", [2048, 8192])
def test_merge_at_thousands_of_lists_keeps_every_size_and_entry(tmp_path: Path, nlist) -> None:
    check_merge_at_many_lists(tmp_path, nlist)


@pytest.mark.parametrize("nlist", [2048, 20000])  # 20000 x 8 bytes: a freed mmap, not a heap block
def test_merge_survives_scribbled_freed_memory(tmp_path: Path, nlist: int) -> None:
    """The list sizes FAISS copies must still be alive when it reads them: run the merge in a
    process whose allocator scribbles over freed memory (MALLOC_PERTURB_), where a pointer
    into a freed temporary reads garbage (or faults) every time."""
    env = {**os.environ, "MALLOC_PERTURB_": "165", "OMP_NUM_THREADS": "1"}
    script = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " + (
        f"import test_merge; from pathlib import Path; "
        f"test_merge.check_merge_at_many_lists(Path({str(tmp_path)!r}), {nlist})"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_merge_whose_lists_do_not_hold_the_blocks_entries_is_refused(tmp_path: Path) -> None:
    from coins.serve.index.merge import MergeError, check_merged

    empty, files, counts = many_list_blocks(tmp_path, 64, (500, 300))
    lists = tmp_path / "lists.ivfdata"
    merge_blocks(empty, files, counts, lists)
    total = np.sum(counts, axis=0, dtype=np.int64)
    sums = np.zeros(64, np.uint64)
    for j in range(64):
        sums[j] = list_ids(ivf_of(empty).invlists, j).view(np.uint64).sum(dtype=np.uint64)
    check_merged(empty, lists, total, sums)  # as merged: passes
    wrong = total.copy()
    wrong[3] += 1
    with pytest.raises(MergeError, match="wrong size"):
        check_merged(empty, lists, wrong, sums)
    bad = sums.copy()
    j = int(np.flatnonzero(total)[0])
    bad[j] += np.uint64(1)  # as if one id of list j were scribbled over
    with pytest.raises(MergeError, match=f"inverted list {j} does not hold the ids"):
        check_merged(empty, lists, total, bad)
