"""Where each id sits in an on-disk IVF index, in a memory-mapped file instead of every process.

FAISS finds a stored vector by id through a direct map: for ids of our own (hashed from paths,
`retrieval/gallery.py`) a hash table, which `read_index` rebuilds in each process that loads the
index, about 40 bytes per vector (39 MiB per million measured, so ~390 MiB in each of N serving
processes of a 10M-vector catalogue). An on-disk build (`serve/index/stream.py`) writes the same
map once as `idmap-G.npy` instead: int64 [n, 2] rows (id, list_no << 32 | offset) sorted by id.
Loading maps it read-only, so its pages are shared page cache, and a lookup is a binary search.
The FAISS file of such a build carries no direct map (`DirectMap.NoMap`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from coins.retrieval.atomic import atomic_path
from coins.serve.index.manifest import IndexLoadError
from coins.serve.index.tuning import ivf_of

OFFSET_BITS = 32  # an inverted list holds < 2**32 entries


def build_id_map(ivf: faiss.IndexIVF) -> np.ndarray:
    """int64 [n, 2]: (id, list_no << 32 | offset) of every stored vector, sorted by id."""
    lists: Any = ivf.invlists  # the bundled stubs lack release_ids
    parts = []
    for list_no in range(ivf.nlist):
        n = lists.list_size(list_no)
        if not n:
            continue
        ptr = lists.get_ids(list_no)
        ids = faiss.rev_swig_ptr(ptr, n).copy()  # [n], copied before the release
        lists.release_ids(list_no, ptr)
        where = (np.int64(list_no) << OFFSET_BITS) | np.arange(n, dtype=np.int64)  # [n]
        parts.append(np.stack([ids, where], axis=1))
    table = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)  # [n, 2]
    return table[np.argsort(table[:, 0], kind="stable")]


def write_id_map(path: Path, table: np.ndarray) -> None:
    """Write `table` as a .npy file atomically (temporary name, fsync, rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(table, dtype=np.int64))


class IdMap:
    """A memory-mapped id map (`build_id_map`'s table) and the IVF index it locates ids in."""

    def __init__(self, path: Path, count: int) -> None:
        try:
            table = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise IndexLoadError(f"{path}: not a readable id map ({e})") from e
        if table.dtype != np.int64 or table.shape != (count, 2):
            raise IndexLoadError(
                f"{path}: id map int64 {table.shape}, expected int64 ({count}, 2): one row per "
                "vector of the index"
            )
        self.path, self.table = path, table

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(list_no, offset) [n] of each id; a KeyError naming ids not in the map."""
        keys = self.table[:, 0]
        rows = np.searchsorted(keys, ids)  # [n]
        found = rows < len(keys)
        found[found] = keys[rows[found]] == ids[found]
        if not found.all():
            raise KeyError(f"ids not in the id map: {ids[~found][:10].tolist()}")
        where = np.asarray(self.table[rows, 1])  # [n]
        return where >> OFFSET_BITS, where & ((1 << OFFSET_BITS) - 1)

    def reconstruct(self, index: faiss.Index, ids: np.ndarray) -> np.ndarray:
        """The stored vectors [n, D] of `ids` in `index` (an IVF, or one behind pre-transforms
        such as OPQ, whose rotation is undone as FAISS's own `reconstruct` does)."""
        ivf: Any = ivf_of(index)
        assert ivf is not None, "an id map locates ids in an IVF index"
        list_nos, offsets = self.locate(ids)
        out = np.empty((len(ids), ivf.d), dtype=np.float32)  # in the IVF's space
        for row, (list_no, offset) in enumerate(zip(list_nos, offsets, strict=True)):
            ivf.reconstruct_from_offset(int(list_no), int(offset), faiss.swig_ptr(out[row]))
        if isinstance(index, faiss.IndexPreTransform) and len(out):
            pre: Any = index  # the stubs know only the numpy wrapper, absent in FAISS 1.15
            x = np.empty((len(out), index.d), dtype=np.float32)  # back in the input space
            pre.reverse_chain(len(out), faiss.swig_ptr(out), faiss.swig_ptr(x))
            out = x
        return out
