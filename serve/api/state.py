"""The loaded model and index of a running server, and the lock that lets writes and swaps happen
while searches are in flight.

Searches hold the read side of a readers-writer lock for the duration of one FAISS call; an admin
add or delete holds the write side. A reload builds the new index outside any lock, then swaps
the reference under the write side: searches already running finish on the old object.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image


class Embedder(Protocol):
    """What the server needs of `coins.retrieval.onnx.runner.OnnxEmbedder`."""

    sha256: str
    dim: int
    coarse_classes: list[str] | None
    preprocess: Any  # coins.retrieval.data.Preprocess

    def to_array(self, image: Image.Image) -> np.ndarray: ...
    def embed_arrays(self, x: np.ndarray) -> Any: ...
    def embed_images(self, images: Sequence[Image.Image]) -> Any: ...


class Index(Protocol):
    """What the server needs of `coins.serve.index.store.SearchIndex`."""

    manifest: Any

    @property
    def dim(self) -> int: ...
    @property
    def ntotal(self) -> int: ...

    def search(
        self, xq: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...
    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...
    def metadata(self, ids: np.ndarray) -> list[dict[str, Any] | None]: ...
    def ids_where(self, coarse: Any = None, fine: Any = None) -> np.ndarray: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]]) -> Any: ...
    def remove(self, ids: np.ndarray) -> Any: ...
    def save(self) -> Any: ...


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

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


@dataclass
class ServiceState:
    """Model, index and readiness of one server; `index` is replaced whole on reload."""

    embedder: Embedder | None = None
    index: Index | None = None
    ready: bool = False
    error: str | None = None  # why loading failed, shown by /readyz
    loaded_at: float | None = None
    lock: ReadWriteLock = field(default_factory=ReadWriteLock)
    reload_lock: threading.Lock = field(default_factory=threading.Lock)  # one reload at a time
    version: int = 0  # bumped by every change of the index, so cached label ids expire
    _label_ids: dict[tuple[int, str, str | int], np.ndarray] = field(default_factory=dict)

    def set_loaded(self, embedder: Embedder, index: Index) -> None:
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
