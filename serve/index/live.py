"""Live updates of a loaded index: each change logged before it is applied, the log replayed on
load, and compaction of the log into a new generation.

An admin add or delete is checked against the index (`LiveLog.add`, `remove`: the checks of
`SearchIndex.add`, `remove`), appended to the write-ahead log and fsynced, and only then applied
in memory (`SearchIndex.add`, `remove`: FAISS `add_with_ids` / `remove_ids` and a metadata
delta). No index file is rewritten. `SearchIndex.load` replays the logs of its generation
(`replay`), so a kill at any moment loses no acknowledged change.

Compaction folds the log into generation T: `compact` (offline, `coins index compact`) takes
the directory's writer lock (writer_lock.py, held by a server with admin routes too), loads and
saves; a server does it while serving (`begin_compaction`, `Compaction.commit`, `finish`): under
its in-process writer lock it clones the FAISS index, freezes the metadata delta and rotates the
log to `wal-T.log`, writes T from the clone and the frozen delta with no lock held while changes
go on into the new log, and finally swaps the new metadata file in under the search lock.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from coins.serve.index.delta import MetadataDelta
from coins.serve.index.manifest import IndexLoadError, Verify
from coins.serve.index.wal import Change, WriteAheadLog, log_generations, log_path, read_log
from coins.serve.index.writer_lock import WriterLock

if TYPE_CHECKING:
    from coins.serve.index.store import SearchIndex

log = logging.getLogger("coins.serve")


class LiveLog:
    """The write-ahead log of one loaded index: `add` and `remove` check a change and make it
    durable; the caller applies it to the index after (`SearchIndex.add`, `remove`)."""

    def __init__(self, index: SearchIndex, wal: WriteAheadLog, replayed: int = 0) -> None:
        self.index = index
        self.wal = wal
        self.replayed = replayed  # changes read back from the logs at load

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
        """Check an add as `SearchIndex.add` would (IndexUpdateError), then log it."""
        from coins.serve.index.store import IndexUpdateError, check_ids, check_rows, check_vectors

        self._writable("add")
        ids = check_ids(ids, len(rows))
        xb = check_vectors(vectors, self.index.dim, "vectors")
        if len(xb) != len(ids):
            raise IndexUpdateError(f"{len(ids)} ids but {len(xb)} vectors")
        rows = check_rows(rows, ids, self.index.schema)
        taken = [int(i) for i, row in zip(ids, self.index.metadata(ids), strict=True) if row]
        if taken:
            raise IndexUpdateError(f"ids already in the index: {taken[:10]}")
        self._append(Change("add", ids, xb, rows))

    def remove(self, ids: np.ndarray) -> None:
        """Check a removal as `SearchIndex.remove` would, then log it."""
        from coins.serve.index.store import IndexUpdateError, UnknownIdError, check_ids

        self._writable("remove")
        if not self.index.supports_removal:
            raise IndexUpdateError(
                f"index type {self.index.manifest.index_key!r} cannot remove vectors (FAISS "
                "HNSW graphs do not delete nodes)"
            )
        ids = check_ids(ids, None)
        missing = [int(i) for i, row in zip(ids, self.index.metadata(ids), strict=True) if not row]
        if missing:
            raise UnknownIdError(f"ids not in the index: {missing[:10]}")
        self._append(Change("remove", ids))

    def needs_compaction(self, max_records: int, max_bytes: int) -> bool:
        return self.wal.records >= max_records or self.wal.bytes >= max_bytes

    def _writable(self, change: str) -> None:
        from coins.serve.index.store import IndexUpdateError

        if self.index.read_only is not None:
            raise IndexUpdateError(
                f"cannot {change} items: the index is read-only, as {self.index.read_only}"
            )

    def _append(self, change: Change) -> None:
        from coins.serve.index.store import IndexUpdateError

        try:
            self.wal.append(change)
        except (TypeError, ValueError) as e:  # encoding, before any byte is written
            raise IndexUpdateError(f"metadata rows must be JSON: {e}") from e


def replay(index: SearchIndex) -> None:
    """Apply the logs of `index`'s generation (and of later, uncommitted ones) in memory and
    attach the log as `index.log` (the load hook of `SearchIndex.load`)."""
    generation = index.manifest.generation
    found = [g for g in log_generations(index.index_dir) if g >= generation]
    seq, valid, replayed = 0, None, 0
    for n, g in enumerate(found):
        path = log_path(index.index_dir, g)
        contents = read_log(path, g, newest=n == len(found) - 1)
        if contents.torn_bytes:
            log.warning("%s: dropped a torn last record (%d bytes)", path, contents.torn_bytes)
        if contents.changes and index.read_only is not None:
            raise IndexLoadError(
                f"{path}: {len(contents.changes)} changes not compacted yet, and the index "
                f"cannot apply them as {index.read_only}; run `coins index compact` first"
            )
        for change in contents.changes:
            if change.seq <= seq:
                raise IndexLoadError(f"{path}: record {change.seq} after record {seq}")
            _apply(index, change, path)
            seq = change.seq
        replayed += len(contents.changes)
        valid = contents.valid_bytes
    wal = WriteAheadLog(index.index_dir, found[-1] if found else generation, valid, seq)
    index.log = LiveLog(index, wal, replayed)


def _apply(index: SearchIndex, change: Change, path: Path) -> None:
    try:
        if change.op == "add":
            assert change.vectors is not None
            index.add(change.ids, change.vectors, change.rows)
        else:
            index.remove(change.ids)
    except ValueError as e:  # IndexUpdateError, UnknownIdError: the log does not fit the index
        raise IndexLoadError(f"{path}: record {change.seq} ({change.op}) cannot apply: {e}") from e


# ---- compaction -------------------------------------------------------------------------------


@dataclass
class CompactReport:
    """What a compaction folded."""

    index_dir: Path
    before: int  # the generation loaded
    after: int  # the generation committed (== before when there was nothing to fold)
    changes: int  # log records folded
    ntotal: int


def compact(index_dir: str | Path, verify: Verify = "fast") -> CompactReport:
    """Fold the write-ahead log of an index directory into a new generation, offline: holding
    its writer lock (IndexLockedError while a server with admin routes writes to it)."""
    from coins.serve.index.store import SearchIndex

    with WriterLock(index_dir, "coins index compact"):
        index = SearchIndex.load(index_dir, verify=verify)
        assert index.log is not None
        before, changes = index.manifest.generation, index.log.replayed
        if changes or index.log.wal.generation != before:
            index.save()
        index.log.wal.close()
    return CompactReport(Path(index_dir), before, index.manifest.generation, changes, index.ntotal)


@dataclass
class Compaction:
    """A generation being written from a frozen copy of a live index."""

    index: SearchIndex  # the live index
    clone: faiss.Index  # its FAISS index at the rotation
    frozen: MetadataDelta  # its metadata changes up to the rotation
    manifest: Any  # its manifest at the rotation (IndexManifest)
    generation: int  # the one to commit: holds every log before wal-<generation>.log
    committed: SearchIndex | None = None

    def commit(self) -> None:
        """Write and commit the generation (slow; no lock needed: nothing here is shared)."""
        from coins.serve.index.store import SearchIndex

        frozen: Any = self.frozen  # `save` writes a delta out as the generation's file
        self.committed = SearchIndex.commit_new(
            self.clone, frozen, self.manifest, self.index.index_dir, self.generation
        )

    def finish(self) -> None:
        """Read the committed metadata file under the live changes. Call holding the writer
        lock and the search write lock (the old base is closed)."""
        assert self.committed is not None
        live = self.index._store
        assert isinstance(live, MetadataDelta) and live.base is self.frozen
        live.rebase(self.committed._store)  # type: ignore[arg-type]
        done = self.committed.manifest
        self.index.manifest.generation = done.generation
        self.index.manifest.files = done.files
        self.index.manifest.count = done.count
        self.index.manifest.updated = done.updated


def begin_compaction(index: SearchIndex) -> Compaction | None:
    """Freeze `index`'s changes, clone its FAISS index and rotate its log to the next
    generation; None if nothing changed. Call holding the writer lock: no change in flight."""
    from coins.serve.index.store import prepare_directory

    assert index.log is not None
    frozen = index._store
    if not isinstance(frozen, MetadataDelta):
        return None  # no change since the generation loaded
    generation = prepare_directory(index.index_dir, overwrite=True)  # past every file and log
    clone = faiss.clone_index(index.index)  # searches go on: cloning only reads
    index._store = frozen.freeze()
    index.log.wal.rotate(generation)
    return Compaction(index, clone, frozen, copy.deepcopy(index.manifest), generation)
