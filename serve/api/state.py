"""The loaded model and index of a running server, and the locks that order searches, admin
writes and reloads.

- Searches hold the read side of a readers-writer lock (`lock`) for one FAISS or metadata call.
- Admin writes (add, delete) and reloads are writers of the index directory. They run one at a
  time, in arrival order, on the state's writer thread (`write`), and each holds `writer`
  from start to end: a write logs its change (the index's write-ahead log, fsynced) before the
  next writer starts, and a reload reads the directory (and replays its log) only after every
  acknowledged write has been logged, so it never swaps in an index without them.
- A write changes the index in memory under the write side of `lock` (searches wait for it,
  for an in-memory add or remove; never for an fsync); a reload loads the new index holding
  only `writer`, so searches go on meanwhile, and takes the write side of `lock` just to swap
  the reference: searches in flight finish on the old object.
- A compaction (`compact_in_background`) holds `writer` to freeze the changes and rotate the
  log, writes the new generation holding no lock, then holds `writer` and the write side of
  `lock` a moment to read the new metadata file: searches never wait for it.
- Other processes: a server whose admin writes reach the directory holds its writer lock file
  (`hold_directory`, serve/index/writer_lock.py) from before the load to shutdown, so a
  `coins index compact` or a second such server fails at once, naming this one's pid.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from coins.serve.index.writer_lock import WriterLock

T = TypeVar("T")
log = logging.getLogger("coins.serve")


class QueryEmbedder(Protocol):
    """What the server needs of `coins.retrieval.onnx.runner.OnnxEmbedder`."""

    sha256: str
    dim: int
    coarse_classes: list[str] | None
    preprocess: Any  # coins.retrieval.data.Preprocess

    def to_array(self, image: Image.Image) -> np.ndarray: ...
    def embed_arrays(self, x: np.ndarray) -> Any: ...
    def embed_images(self, images: Sequence[Image.Image]) -> Any: ...


class ChangeLog(Protocol):
    """What the server needs of `coins.serve.index.live.LiveLog`: check a change and make it
    durable (the caller applies it after)."""

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def needs_compaction(self, max_records: int, max_bytes: int) -> bool: ...


class Index(Protocol):
    """What the server needs of `coins.serve.index.store.SearchIndex`."""

    manifest: Any

    @property
    def log(self) -> ChangeLog | None: ...  # None: changes stay in memory

    @property
    def dim(self) -> int: ...
    @property
    def ntotal(self) -> int: ...

    def search(
        self, xq: np.ndarray, k: int, allowed_ids: np.ndarray | None = None, filter: Any = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def select(self, filter: Any) -> np.ndarray: ...  # ids a filter keeps; FilterError
    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...
    def metadata(self, ids: np.ndarray) -> list[dict[str, Any] | None]: ...
    def metadata_json(self, ids: np.ndarray) -> list[str | None]: ...  # `metadata` as JSON
    def ids_where(self, coarse: Any = None, fine: Any = None) -> np.ndarray: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]]) -> Any: ...
    def remove(self, ids: np.ndarray) -> Any: ...


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def read(self) -> _Reading:
        """`with lock.read(): ...` holds the lock as one of many readers."""
        return _Reading(self)

    def busy(self) -> bool:
        """Whether a writer holds or waits for the lock (a glance, without taking it): a
        reader that must not block, the event loop's, goes elsewhere then."""
        return self._writer or self._writers_waiting > 0

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Reading:
    """A read hold of a ReadWriteLock (a class: contextlib's generator managers cost ~3 us,
    twice a search). A reader leaving wakes the waiting writers only when it was the last:
    readers wait on writers alone, which a reader's leaving does not change."""

    __slots__ = ("_lock",)

    def __init__(self, lock: ReadWriteLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        lock = self._lock
        with lock._cond:
            lock._cond.wait_for(lambda: not lock._writer and not lock._writers_waiting)
            lock._readers += 1

    def __exit__(self, *exc: object) -> None:
        lock = self._lock
        with lock._cond:
            lock._readers -= 1
            if lock._readers == 0 and lock._writers_waiting:
                lock._cond.notify_all()


def _writer_thread() -> ThreadPoolExecutor:
    # one thread: writers are serialised anyway, and a queue of them must not fill the search
    # pool (searches would wait for a reload's load, which they need not)
    return ThreadPoolExecutor(1, thread_name_prefix="coins-writer")


@dataclass
class ServiceState:
    """Model, index and readiness of one server; `index` is replaced whole on reload."""

    embedder: QueryEmbedder | None = None
    index: Index | None = None
    ready: bool = False
    error: str | None = None  # why loading failed, shown by /readyz
    loaded_at: float | None = None
    lock: ReadWriteLock = field(default_factory=ReadWriteLock)
    writer: threading.Lock = field(default_factory=threading.Lock)  # held by an add, a delete
    # or a reload from start to end: one writer of the index (and its directory) at a time
    writes: ThreadPoolExecutor = field(default_factory=_writer_thread)
    version: int = 0  # bumped by every change of the index, so cached label ids expire
    compaction: threading.Thread | None = None  # the background compaction, if one ran
    directory_lock: WriterLock | None = None  # the index directory's, while admin writes log
    _label_ids: dict[tuple[int, str, str | int], np.ndarray] = field(default_factory=dict)

    def set_loaded(self, embedder: QueryEmbedder, index: Index) -> None:
        with self.lock.write():
            self.embedder, self.index = embedder, index
            self.loaded_at = time.time()
            self.error = None
            self.changed()

    def swap_index(self, index: Index) -> None:
        with self.lock.write():
            self.index = index
            self.loaded_at = time.time()
            self.changed()

    def hold_directory(self, index_dir: Path) -> None:
        """Take `index_dir`'s writer lock for this server's life (IndexLockedError, naming the
        holder, if another process writes to it): call before loading, so no other writer
        commits between the replay of the log and this server's appends to it."""
        if self.directory_lock is None and index_dir.is_dir():  # if not, the load says so
            self.directory_lock = WriterLock(index_dir, "coins serve").acquire()

    def close(self) -> None:
        """Release the directory's writer lock (at shutdown)."""
        if self.directory_lock is not None:
            self.directory_lock.release()
            self.directory_lock = None

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` (an admin add, delete or reload) on the writer thread: admin requests
        queue there in arrival order and, while they wait, hold no search-pool thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.writes, functools.partial(fn, *args))

    def compact_in_background(self, index: Index) -> None:
        """Fold `index`'s write-ahead log into a new generation in a thread, unless one is
        running already (`coins.serve.index.live.begin_compaction`)."""
        if self.compaction is not None and self.compaction.is_alive():
            return
        self.compaction = threading.Thread(
            target=self._compact, args=(index,), name="coins-compact", daemon=True
        )
        self.compaction.start()

    def _compact(self, index: Index) -> None:
        from coins.serve.index.live import begin_compaction

        try:
            with self.writer:
                if self.index is not index:
                    return  # reloaded meanwhile
                job = begin_compaction(index)  # type: ignore[arg-type]
            if job is None:
                return
            job.commit()  # no lock: searches and admin writes go on
            with self.writer, self.lock.write():
                if self.index is index:
                    job.finish()
            log.info("compacted the log into generation %d", job.generation)
        except Exception:  # the log still holds every change: a later compaction retries
            log.exception("compaction failed; the write-ahead log keeps every change")

    def changed(self) -> None:
        """Call under the write lock after the index changed."""
        self.version += 1
        self._label_ids.clear()

    def ids_where(self, level: str, value: str | int) -> np.ndarray:
        """Ids (sorted int64) of one coarse or fine class, cached until the index changes:
        the coarse gate asks for the same few classes on every request."""
        assert level in ("coarse", "fine"), level
        with self.lock.read():
            key = (self.version, level, value)
            found = self._label_ids.get(key)
            if found is None:
                assert self.index is not None
                found = np.asarray(self.index.ids_where(**{level: value}), dtype=np.int64)
                self._label_ids[key] = found
        return found
