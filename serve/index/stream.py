"""Build an index from embedding shards with bounded memory (`coins index --from-embeddings`).

The shards are read through `coins.retrieval.shards.open_embeddings` (any `EmbeddingSource`):
the index is trained on a seeded sample (`EmbeddingSource.sample`), then filled chunk by
chunk, each chunk's vectors memory-mapped and its metadata rows inserted into SQLite as it
goes. Tuning queries are a seeded sample of the items, held out of the index until tuned; their
exact neighbours are merged chunk by chunk (nq x N x D flops: ~1.3e12 for 1,000 queries over
10M 128-d vectors, about a minute on two cores).

Memory: the index itself (none of its lists with `on_disk`), the training sample, one chunk,
and the queries' running top k. With `on_disk`, groups of chunks become block indexes in a
temporary folder beside the output, merged one block at a time into one `lists-G.ivfdata` file
(`merge.merge_blocks`); the disk then briefly holds the lists twice.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from coins.retrieval.knn import nearest
from coins.serve.index.choice import choose_index, train_size
from coins.serve.index.gpu import train_on_gpu
from coins.serve.index.idmap import build_id_map, write_id_map
from coins.serve.index.manifest import gallery_roots, new_manifest
from coins.serve.index.merge import list_sizes, merge_blocks
from coins.serve.index.metadata import MetadataStore
from coins.serve.index.store import (
    SearchIndex,
    check_vectors,
    idmap_path,
    lists_path,
    new_faiss_index,
    new_generation,
    new_metadata,
)
from coins.serve.index.tuning import ivf_of, tune, without

TUNE_QUERIES = 1000  # held-out queries for tuning
TUNE_K = 10  # tuning targets 10-recall@10
ADD_BLOCK = 65536  # vectors per add_with_ids call
BLOCK_VECTORS = 2**18  # vectors per block index of an on-disk build (128 MiB at d = 128)

GT_BLOCK = 16384  # database rows per exact-search block of the tuning ground truth
_faiss: Any = faiss  # the bundled stubs lack DirectMap


class ShardChunk(Protocol):
    """One chunk of a shard folder: ids [n], vectors [n, D] (memory-mapped) and rows."""

    @property
    def ids(self) -> np.ndarray: ...
    @property
    def vectors(self) -> np.ndarray: ...
    def rows(self) -> list[dict[str, Any]]: ...


class EmbeddingSource(Protocol):
    """What the build needs of `coins.retrieval.shards.EmbeddingSet`."""

    @property
    def dim(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def model_sha256(self) -> str: ...
    @property
    def info(self) -> dict[str, Any]: ...
    def chunks(self) -> Iterator[ShardChunk]: ...
    def sample(self, n: int, seed: int) -> np.ndarray: ...


def build_from_source(
    embeddings: EmbeddingSource,
    out_dir: str | Path,
    index_key: str = "auto",
    target_recall: float = 0.95,
    max_memory: int | None = None,
    on_disk: bool = False,
    source: dict[str, Any] | None = None,
    tune_queries: int = TUNE_QUERIES,
    overwrite: bool = False,
    seed: int = 0,
    log: Any = None,
    fields: Mapping[str, str] | None = None,
) -> SearchIndex:
    """Build, tune and save an index of every chunk of `embeddings` in `out_dir`; `fields`
    declares field types, the others are inferred from the rows (fields.py)."""
    say = log or (lambda message: None)
    n, d = embeddings.count, embeddings.dim
    choice = choose_index(index_key, n, d, max_memory, on_disk=on_disk)
    index, key = new_faiss_index(choice.key, d)
    if on_disk and ivf_of(index) is None:
        raise ValueError(f"on-disk inverted lists need an IVF index, not {key!r}")
    # a build that does not commit leaves the directory as it was (`new_generation`)
    with new_generation(out_dir, overwrite) as generation:
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        _train(index, key, embeddings, seed, say)
        held = _held_out(n, min(tune_queries, n // 10), rng)  # global positions, ascending
        xq, xq_ids = _gather(embeddings, held)
        store = new_metadata(out_dir, generation)
        lists = lists_path(out_dir, generation) if on_disk else None
        idmap = idmap_path(out_dir, generation) if on_disk else None
        blocks = _Blocks(index, lists, idmap) if lists is not None and idmap is not None else None
        # On-disk lists take no adds once merged (FAISS 1.15 corrupts lists it moves to grow them):
        # there every vector goes in, and tuning leaves each query's own id out of its results.
        leave_one_out = blocks is not None
        gt = _fill(index, embeddings, store, held, xq, xq_ids, blocks, say)
        schema = store.type_fields(fields)  # shard rows are text, as the csv's cells
        say(f"added {n:,} vectors in {time.perf_counter() - start:.0f} s")
        params: dict[str, int] = {}
        tuning = None
        if len(held):
            exclude = xq_ids if leave_one_out else None
            params, tuning = tune(index, xq, gt, target_recall, exclude=exclude)
            if not leave_one_out:
                index.add_with_ids(xq, xq_ids)  # the queries join last (see build._add_and_tune)
        info = embeddings.info
        manifest = new_manifest(
            source,
            dim=d,
            index_key=key,
            count=n,
            requested_key=index_key,
            choice_reason=choice.reason,
            index_params=params,
            tuning=tuning,
            model_sha256=embeddings.model_sha256,
            preprocess=info.get("preprocess"),
            id_scheme=info.get("id_scheme"),
            roots=gallery_roots(source or {}),
            classes=store.class_names(),
            fields=dict(schema.fields),
        )
        return SearchIndex.commit_new(index, store, manifest, out_dir, generation, lists, idmap)


def append_from_source(
    embeddings: EmbeddingSource,
    index_dir: str | Path,
    source: dict[str, Any] | None = None,
    fields: Mapping[str, str] | None = None,
) -> SearchIndex:
    """Add every chunk of `embeddings` to the index in `index_dir` (same model, same fields)
    and save once."""
    from coins.serve.index.build import append_rows

    index = SearchIndex.load(index_dir, model_sha256=embeddings.model_sha256)
    for chunk in embeddings.chunks():
        rows = append_rows(index, chunk.rows(), fields)
        index.add(np.asarray(chunk.ids), np.asarray(chunk.vectors), rows)
    index.manifest.roots = gallery_roots(source or {}, (), index.manifest.roots)
    index.save()
    return index


def _train(index: faiss.Index, key: str, embeddings: EmbeddingSource, seed: int, say: Any) -> None:
    """Train on a seeded sample (k-means on a GPU when FAISS has one)."""
    if index.is_trained:
        return
    size = train_size(key, embeddings.count) or embeddings.count
    xt = check_vectors(embeddings.sample(size, seed), embeddings.dim, "training sample")
    on_gpu = train_on_gpu(index)
    t0 = time.perf_counter()
    try:
        index.train(xt)
    except RuntimeError as e:
        raise ValueError(
            f"cannot train {key!r} on {len(xt):,} vectors: {str(e).splitlines()[-1]}"
        ) from e
    where = "GPU" if on_gpu else "CPU"
    say(f"trained {key} on {len(xt):,} vectors ({where}) in {time.perf_counter() - t0:.0f} s")


def _held_out(n: int, nq: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=nq, replace=False)) if nq > 0 else np.empty(0, np.int64)


def _gather(embeddings: EmbeddingSource, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vectors xq [nq, D] and ids [nq] at global positions `held` (ascending)."""
    xq, ids, offset = [], [], 0
    for chunk in embeddings.chunks():
        size = len(chunk.ids)
        local = held[(held >= offset) & (held < offset + size)] - offset
        xq.append(np.asarray(chunk.vectors[local], dtype=np.float32))
        ids.append(np.asarray(chunk.ids[local], dtype=np.int64))
        offset += size
    if offset != embeddings.count:
        raise ValueError(f"the chunks hold {offset:,} vectors, the shards say {embeddings.count:,}")
    d = embeddings.dim
    x = np.concatenate(xq) if xq else np.empty((0, d), np.float32)
    return np.ascontiguousarray(x), np.concatenate(ids) if ids else np.empty(0, np.int64)


def _fill(
    index: faiss.Index,
    embeddings: EmbeddingSource,
    store: MetadataStore,
    held: np.ndarray,
    xq: np.ndarray,
    xq_ids: np.ndarray,
    blocks: _Blocks | None,
    say: Any,
) -> np.ndarray:
    """Add the vectors chunk by chunk, insert all rows, and return the queries' exact top-k ids.

    In memory, every vector but the held-out ones goes into `index`. With `blocks` (an on-disk
    build) every vector goes into block indexes merged on disk at the end, and the top k leave
    out each query's own id."""
    leave_one_out = blocks is not None
    k = min(TUNE_K, embeddings.count - len(held))
    top = _TopK(xq, k + 1 if leave_one_out else k)
    offset = 0
    for chunk in embeddings.chunks():
        ids = np.asarray(chunk.ids, dtype=np.int64)
        keep = np.ones(len(ids), dtype=bool)
        if not leave_one_out:
            keep[held[(held >= offset) & (held < offset + len(ids))] - offset] = False
        xb = check_vectors(chunk.vectors, embeddings.dim, "shard vectors")
        target = blocks.current() if blocks is not None else index
        for s in range(0, len(ids), ADD_BLOCK):
            part = slice(s, s + ADD_BLOCK)
            target.add_with_ids(xb[part][keep[part]], ids[part][keep[part]])
        top.update(xb, ids, keep)
        store.insert(chunk.rows())
        offset += len(ids)
        if blocks is not None:
            blocks.maybe_flush()
        say(f"{offset:,} / {embeddings.count:,} vectors")
        del xb, chunk  # release the chunk's mapping before the next one
    if blocks is not None:
        blocks.merge()
    return without(top.ids, xq_ids, k) if leave_one_out else top.ids


class _TopK:
    """The exact k nearest ids of queries xq, merged over blocks of the database."""

    def __init__(self, xq: np.ndarray, k: int) -> None:
        self.xq = xq
        self.k = k
        self.D = np.full((len(xq), 0), -np.inf, dtype=np.float32)  # [nq, <= k]
        self.ids = np.empty((len(xq), 0), dtype=np.int64)

    def update(self, xb: np.ndarray, ids: np.ndarray, keep: np.ndarray) -> None:
        """Merge in the rows of xb [n, D] (ids [n]) where `keep`, GT_BLOCK rows at a time: the
        scores of a block are [nq, GT_BLOCK] (64 MiB for 1,000 queries), not [nq, n]."""
        for s in range(0, len(xb), GT_BLOCK):
            part = slice(s, s + GT_BLOCK)
            self._update(xb[part], ids[part], keep[part])

    def _update(self, xb: np.ndarray, ids: np.ndarray, keep: np.ndarray) -> None:
        if not len(self.xq) or self.k < 1 or not keep.any():
            return
        D, I = nearest(self.xq, xb, self.k, allowed=keep)  # noqa: E741 (FAISS's names)
        D = np.concatenate([self.D, D], axis=1)
        found = np.concatenate([self.ids, ids[I]], axis=1)
        order = np.argsort(-D, axis=1, kind="stable")[:, : self.k]  # ties: earlier first
        self.D = np.take_along_axis(D, order, axis=1)
        self.ids = np.take_along_axis(found, order, axis=1)


class _Blocks:
    """Block indexes of an on-disk build: empty copies of the trained index, filled with up
    to BLOCK_VECTORS vectors each, written to a temporary folder, then merged on disk."""

    def __init__(self, index: faiss.Index, lists: Path, idmap: Path) -> None:
        self.index = index
        self.lists, self.idmap = lists, idmap
        ivf = ivf_of(index)
        assert ivf is not None
        # Neither the blocks nor the merged index keep a direct map: `idmap` locates ids
        ivf.set_direct_map_type(_faiss.DirectMap.NoMap)
        self.folder = Path(tempfile.mkdtemp(prefix=".blocks-", dir=lists.parent))
        self.files: list[str] = []
        self.sizes: list[np.ndarray] = []  # each block's list sizes
        self.block: faiss.Index | None = None

    def current(self) -> faiss.Index:
        if self.block is None:
            self.block = faiss.clone_index(self.index)
        return self.block

    def maybe_flush(self, force: bool = False) -> None:
        if self.block is not None and (force or self.block.ntotal >= BLOCK_VECTORS):
            path = self.folder / f"block-{len(self.files):04d}.faiss"
            faiss.write_index(self.block, str(path))
            self.files.append(str(path))
            self.sizes.append(list_sizes(self.block))
            self.block = None

    def merge(self) -> None:
        """Merge the blocks into `lists`, swap them into the index, write their id map."""
        self.maybe_flush(force=True)
        try:
            merge_blocks(self.index, self.files, self.sizes, self.lists)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
        ivf = ivf_of(self.index)
        assert ivf is not None
        write_id_map(self.idmap, build_id_map(ivf))
