"""Metadata of the indexed items in SQLite, beside the FAISS index: id -> path, coarse, fine, extra.

One table, `items(id INTEGER PRIMARY KEY, path, coarse, fine, extra)`. `coarse` and `fine` are
text (class names, or label numbers written as text), `extra` the item's fields as a JSON object
(typed values: fields.py). A build indexes coarse, fine and each field's JSON value
(`index_fields`), so that a filter (filters.py, `ids_matching`) reads an index, not every row.
A database file belongs to one version of the index directory and is never changed once
that version is committed: an update copies it to the next version's name first (`copy_to`).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from coins.serve.index.fields import Schema
    from coins.serve.index.filters import Where

COLUMNS = ("id", "path", "coarse", "fine")  # the columns of their own; the rest goes to `extra`

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT,
    coarse TEXT,
    fine TEXT,
    extra TEXT NOT NULL DEFAULT '{}'
)
"""
_BATCH = 10_000  # rows per batch of `type_fields`
_CHUNK = 900  # ids per `IN (...)` query: SQLite allows 999 host parameters by default
# [design] SQLite's page cache per connection (KiB; its default is 2 MiB): a search's
# metadata lookups read a few B-tree pages per id at random; a larger cache keeps the hot
# pages in the process instead of a read() from the OS cache each (48 -> 26 us for 10 ids of
# 1M rows, measured 2026-12-07). Pages are allocated as they are read, not up front.
PAGE_CACHE_KIB = 64 * 1024
# Each row as the JSON the API shows (`ItemMetadata`: search.metadata_dict), written by SQLite:
# `extra` is JSON text already, and the JSON1 functions copy its numbers' text as written
_ROW_JSON = (
    "json_object('id', id, 'path', path, 'coarse', coarse, 'fine', fine, 'extra', json(extra))"
)


class MetadataError(ValueError):
    """Bad metadata rows, or a database that is not an index's metadata."""


class MetadataStore:
    """The `items` table of one SQLite file."""

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise MetadataError(f"{self.path}: metadata database not found")
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            self._db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            if create:  # a committed file is never changed, not even by CREATE IF NOT EXISTS
                self._db.execute(_SCHEMA)
            self._db.execute("SELECT id, path, coarse, fine, extra FROM items LIMIT 1")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise MetadataError(f"{self.path}: not an index metadata database ({e})") from e

    def close(self) -> None:
        self._db.close()

    def copy_to(self, path: Path) -> MetadataStore:
        """A copy of this database at `path` (the next version's file), opened for writing."""
        self._db.commit()
        shutil.copyfile(self.path, path)
        return MetadataStore(path)

    def write_to(self, path: Path) -> MetadataStore:
        """A copy at `path`, opened for writing, read through the open connection (SQLite's
        backup): the file may be gone already, replaced by a commit of a later generation."""
        self._db.commit()
        Path(path).unlink(missing_ok=True)
        out = sqlite3.connect(path)
        try:
            self._db.backup(out)
        finally:
            out.close()
        return MetadataStore(path)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows (each with an int `id`) in one transaction; an existing id is an error."""
        records = [_record(row) for row in rows]
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO items (id, path, coarse, fine, extra) VALUES (?, ?, ?, ?, ?)",
                    records,
                )
        except sqlite3.IntegrityError as e:
            raise MetadataError(f"{self.path}: duplicate id in metadata rows ({e})") from e

    def delete(self, ids: np.ndarray) -> int:
        """Delete the rows of `ids`; returns how many existed."""
        deleted = 0
        with self._db:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                cur = self._db.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
                deleted += cur.rowcount
        return deleted

    def get(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        """The row of each id, in order; None where an id has none."""
        found: dict[int, dict[str, Any]] = {}
        for id_, path, coarse, fine, extra in self._rows("path, coarse, fine, extra", ids):
            found[id_] = {"id": id_, "path": path, "coarse": coarse, "fine": fine}
            found[id_].update(json.loads(extra))
        return [found.get(int(i)) for i in np.asarray(ids).ravel()]

    def get_json(self, ids: np.ndarray) -> list[str | None]:
        """The row of each id as the API's JSON text (`ItemMetadata`), in order; None where an
        id has none. What `get` reads, without a Python object per field: the search route
        embeds the text in its answer as it is. sqlite3.OperationalError where SQLite cannot
        read a row's `extra` as JSON (a NaN that Python's json wrote): use `get`."""
        found: dict[int, str] = dict(self._rows(_ROW_JSON, ids))
        return [found.get(int(i)) for i in np.asarray(ids).ravel()]

    def _rows(self, columns: str, ids: np.ndarray) -> Iterator[tuple[Any, ...]]:
        """(id, *columns) of the rows of `ids` that exist, in no particular order."""
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, {columns} FROM items WHERE id IN ({marks})"
            yield from self._db.execute(query, chunk)

    def ids_where(self, coarse: str | None = None, fine: str | None = None) -> np.ndarray:
        """Ids (int64, ascending) whose coarse and fine labels equal the given ones."""
        clauses, args = [], []
        for column, value in (("coarse", coarse), ("fine", fine)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(str(value))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(f"SELECT id FROM items{where} ORDER BY id", args).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def ids_matching(self, where: Where) -> np.ndarray:
        """Ids (int64, ascending) of the rows where `where` (filters.compile_filter) holds."""
        # one text of every id, parsed by numpy: a row at a time through Python is 3x slower
        query = f"SELECT group_concat(id) FROM items WHERE {where.sql}"
        text = self._db.execute(query, where.args).fetchone()[0]
        ids = np.fromstring(text, dtype=np.int64, sep=",") if text else np.empty(0, np.int64)
        ids.sort()
        return ids

    def index_fields(self, names: Sequence[str]) -> None:
        """Create the indexes filters use: coarse, fine and each field's value (call before the
        file is committed: a committed file is never changed)."""
        from coins.serve.index.filters import field_expression

        with self._db:
            self._db.execute("CREATE INDEX IF NOT EXISTS items_coarse ON items(coarse)")
            self._db.execute("CREATE INDEX IF NOT EXISTS items_fine ON items(fine)")
            for n, name in enumerate(names):
                self._db.execute(
                    f"CREATE INDEX IF NOT EXISTS items_field_{n} ON items({field_expression(name)})"
                )

    def type_fields(self, declared: Mapping[str, str] | None = None) -> Schema:
        """Infer the fields' schema from every row (`declared` types win), store the values
        typed and index them; for a build that inserted text rows (`coins embed` shards). Reads
        the rows twice, _BATCH at a time: memory stays bounded at any size."""
        from coins.serve.index.fields import infer_schema

        schema = infer_schema(self._extras(), declared)
        last = None
        while batch := self._extra_batch(last):
            typed = schema.parse_rows([{"id": i, **extra} for i, extra in batch])
            with self._db:
                self._db.executemany(
                    "UPDATE items SET extra = ? WHERE id = ?",
                    [(_extra_json(row), row["id"]) for row in typed],
                )
            last = batch[-1][0]
        self.index_fields(list(schema.fields))
        return schema

    def _extras(self) -> Iterator[dict[str, Any]]:
        last = None
        while batch := self._extra_batch(last):
            yield from (extra for _, extra in batch)
            last = batch[-1][0]

    def _extra_batch(self, after: int | None) -> list[tuple[int, dict[str, Any]]]:
        query = "SELECT id, extra FROM items WHERE id > ? ORDER BY id LIMIT ?"
        rows = self._db.execute(query, (-(2**63) if after is None else after, _BATCH))
        return [(i, json.loads(e)) for i, e in rows]  # id -(2**63) itself: never an item id

    def class_names(self) -> dict[str, list[str]]:
        """Sorted distinct coarse and fine labels (without loading every row)."""
        return {
            level: [r[0] for r in self._db.execute(
                f"SELECT DISTINCT {level} FROM items WHERE {level} IS NOT NULL ORDER BY {level}"
            )]
            for level in ("coarse", "fine")
        }  # fmt: skip

    def labels(self) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        """All ids (ascending) with their coarse and fine labels, for evaluation."""
        rows = self._db.execute("SELECT id, coarse, fine FROM items ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, [r[1] for r in rows], [r[2] for r in rows]


def _record(row: dict[str, Any]) -> tuple[int, str | None, str | None, str | None, str]:
    """One row as the table's columns; the columns beyond COLUMNS go to `extra` as JSON."""
    if "id" not in row:
        raise MetadataError(f"metadata row without an 'id': {row!r}")
    try:
        extra_json = _extra_json(row)
    except (TypeError, ValueError) as e:
        raise MetadataError(f"metadata row {row['id']}: extra columns not JSON ({e})") from e

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return (
        int(row["id"]),
        text(row.get("path")),
        text(row.get("coarse")),
        text(row.get("fine")),
        extra_json,
    )


def _extra_json(row: dict[str, Any]) -> str:
    """The columns of a row beyond COLUMNS, as the JSON text of `extra`."""
    return json.dumps({k: v for k, v in row.items() if k not in COLUMNS}, sort_keys=True)


def _chunks(ids: np.ndarray) -> list[list[int]]:
    flat = [int(i) for i in np.asarray(ids).ravel()]
    return [flat[s : s + _CHUNK] for s in range(0, len(flat), _CHUNK)]
