"""The metadata changes made since a generation, over its read-only SQLite file.

A committed metadata file is never changed. Admin adds and deletes go to a delta instead: the
rows added (an in-memory SQLite table, the same schema) and the ids of the base deleted. Reads
answer as if the changes had been applied: an added row wins, then a deleted id is absent, then
the base answers. `write_to` makes the next generation's file (the base copied, the changes
applied); `freeze` stacks a new delta on this one, so a compaction can write this one out while
changes go on.

**[design]** The delta lives in memory (it is rebuilt from the write-ahead log on load), so a
change never copies the base: at millions of rows that copy was the cost of every admin write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from coins.serve.index.metadata import MetadataStore

if TYPE_CHECKING:
    from coins.serve.index.filters import Where

T = TypeVar("T")


class MetadataDelta:
    """Rows added and ids deleted on top of `base` (read, never written)."""

    def __init__(self, base: MetadataStore | MetadataDelta) -> None:
        self.base = base
        self.added = MetadataStore(Path(":memory:"), create=True)  # rows added since base
        self.deleted: set[int] = set()  # ids of base rows deleted (or replaced by an add)
        self._mutex = threading.Lock()  # `deleted` is read by searches while a writer changes it

    @property
    def changes(self) -> int:
        return self.added.count() + len(self.deleted)

    def get(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        return self._read(ids, lambda store, i: store.get(i))

    def get_json(self, ids: np.ndarray) -> list[str | None]:
        """`get` as the API's JSON text of each row (MetadataStore.get_json)."""
        return self._read(ids, lambda store, i: store.get_json(i))

    def _read(
        self, ids: np.ndarray, read: Callable[[MetadataStore | MetadataDelta, np.ndarray], list[T]]
    ) -> list[T | None]:
        """`read` of each id: from the rows added, else None if deleted, else from the base."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        new = read(self.added, ids)
        with self._mutex:
            gone = [int(i) in self.deleted for i in ids]
        old = read(self.base, ids)
        both = zip(new, gone, old, strict=True)
        return [n if n is not None else (None if g else o) for n, g, o in both]

    def ids_where(self, coarse: str | None = None, fine: str | None = None) -> np.ndarray:
        old = self.base.ids_where(coarse=coarse, fine=fine)
        with self._mutex:
            gone = np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted))
        new = self.added.ids_where(coarse=coarse, fine=fine)
        return np.union1d(np.setdiff1d(old, gone), new)  # sorted, as the base's

    def ids_matching(self, where: Where) -> np.ndarray:
        """Ids (ascending) where `where` holds: the base's not deleted, and the added rows'."""
        old = self.base.ids_matching(where)
        with self._mutex:
            gone = np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted))
        new = self.added.ids_matching(where)
        if gone.size:  # the common case, no deletes or no adds, skips a sort of every match
            old = old[~np.isin(old, gone)]
        return np.union1d(old, new) if new.size else old

    def labels(self) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        ids, coarse, fine = self.base.labels()
        with self._mutex:
            gone = set(self.deleted)
        kept = zip(ids, coarse, fine, strict=True)
        rows = {int(i): (c, f) for i, c, f in kept if int(i) not in gone}
        new_ids, new_coarse, new_fine = self.added.labels()
        rows.update({int(i): (c, f) for i, c, f in zip(new_ids, new_coarse, new_fine, strict=True)})
        order = sorted(rows)
        return (
            np.array(order, dtype=np.int64),
            [rows[i][0] for i in order],
            [rows[i][1] for i in order],
        )

    def count(self) -> int:
        return self.base.count() - len(self.deleted) + self.added.count()

    def insert(self, rows: list[dict[str, Any]]) -> None:
        """Add rows of ids not present (SearchIndex checks that first)."""
        self.added.insert(rows)

    def delete(self, ids: np.ndarray) -> int:
        """Delete the rows of `ids`; returns how many existed."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        present = [i for i, row in zip(ids, self.get(ids), strict=True) if row is not None]
        old = self.base.get(ids)
        in_base = [int(i) for i, row in zip(ids, old, strict=True) if row is not None]
        self.added.delete(np.asarray(present, dtype=np.int64))
        with self._mutex:
            self.deleted.update(in_base)
        return len(present)

    def freeze(self) -> MetadataDelta:
        """A new, empty delta over this one; this one changes no more."""
        return MetadataDelta(self)

    def rebase(self, base: MetadataStore) -> None:
        """`base` (a generation's file holding exactly the old base's rows) replaces the old
        base, which is closed: call with no read in flight."""
        assert base.count() == self.base.count(), (base.count(), self.base.count())
        old, self.base = self.base, base
        old.close()

    def write_to(self, path: Path) -> MetadataStore:
        """The base with these changes, as a new database file at `path`, open for writing."""
        out = self.base.write_to(path)
        with self._mutex:
            gone = np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted))
        out.delete(gone)
        ids, _, _ = self.added.labels()
        out.insert([row for row in self.added.get(ids) if row is not None])
        return out

    def close(self) -> None:
        self.added.close()
        self.base.close()
