"""The on-disk search index: a FAISS index with int64 ids, SQLite metadata and a manifest.

An index directory holds `index.json` (the manifest, `IndexManifest`), `index-GGGGGG.faiss`,
`metadata-GGGGGG.sqlite` and, for on-disk inverted lists, `lists-GGGGGG.ivfdata` and the
memory-mapped id map `idmap-GGGGGG.npy` (`idmap.py`), G the generation. Files of a generation
are written once and never changed; a save writes the next generation's files, then replaces
`index.json` (one atomic rename: the commit), then deletes the files no save can commit any
more (older generations, temporary files of killed saves). A crash at any point thus leaves a
manifest whose files exist and match its checksums. One writer at a time.

Vectors are L2-normalised and compared by inner product (cosine). Indexes with an inverted
file keep their own ids (with a hash-table direct map, for `reconstruct` and `remove`, or for
on-disk lists the shared id map file); every other index is wrapped in `IDMap2`.

Loading with `mmap` maps the FAISS file instead of reading it (IVF lists through FAISS's
IO_FLAG_MMAP, Flat codes through IO_FLAG_MMAP_IFC); on-disk lists are always mapped. Either
makes the index read-only here: `add` and `remove` are refused (load without `mmap`, or rebuild).
"""

# FAISS names its results D (scores) and I (ids); E741 would rename I.

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from coins.retrieval.atomic import atomic_path
from coins.serve.index.delta import MetadataDelta
from coins.serve.index.fields import Schema
from coins.serve.index.filtered import search_allowed
from coins.serve.index.filters import (
    Filter,
    FilterError,
    HasId,
    compile_filter,
    label_filter,
    parse_filter,
)
from coins.serve.index.idmap import IdMap
from coins.serve.index.live import LiveLog, replay
from coins.serve.index.manifest import (
    FILE_SUFFIX,
    MANIFEST_NAME,
    FileRecord,
    IndexLoadError,
    IndexManifest,
    Verify,
    now_utc,
)
from coins.serve.index.metadata import MetadataError, MetadataStore
from coins.serve.index.tuning import inner_index, ivf_of, set_knob
from coins.serve.index.wal import log_generations, log_path

__all__ = [
    "IndexLoadError",
    "IndexUpdateError",
    "SearchIndex",
    "UnknownIdError",
    "check_vectors",
    "idmap_path",
    "lists_path",
    "new_faiss_index",
    "new_metadata",
    "prepare_directory",
]

_faiss: Any = faiss  # the bundled faiss stubs lack SearchParameters* keywords and DirectMap
NORM_TOL = 1e-3  # stored vectors must have |x| within this of 1
_ROLES, _SUFFIXES = "|".join(FILE_SUFFIX), "|".join(FILE_SUFFIX.values())
_GENERATION_FILE = re.compile(rf"^({_ROLES})-(\d{{6}})\.({_SUFFIXES})$")
# what `atomic_path` writes before its rename, e.g. `.index-000007.faiss.k3j9x_q.tmp`
_GENERATION_TMP = re.compile(rf"^\.({_ROLES})-(\d{{6}})\.({_SUFFIXES})\..+\.tmp$")
_MANIFEST_TMP = re.compile(r"^\." + re.escape(MANIFEST_NAME) + r"\..+\.tmp$")
ON_DISK_READ_ONLY = "its inverted lists are on disk (built with --on-disk); rebuild to change it"
SELECTIONS_CACHED = 32  # filters whose ids `select` keeps until the next change
STALE_TMP_SECONDS = 600.0  # a manifest's temporary file older than this is a killed save's


class IndexUpdateError(ValueError):
    """An add or remove the index refuses: bad ids, or a type that cannot remove."""


class UnknownIdError(ValueError):
    """Ids asked for that the index does not hold."""


def result_rows(
    D: np.ndarray,
    I: np.ndarray,  # noqa: E741 (FAISS's name)
    k: int,
    exclude: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, scores) of each query's first k results of a search (D, I [nq, >= k]), without
    FAISS's padding id -1 and, with `exclude` [nq], without id exclude[q] (the query itself)."""
    rows = []
    for q in range(len(I)):
        keep = I[q] >= 0
        if exclude is not None:
            keep &= I[q] != exclude[q]
        rows.append((I[q][keep][:k], D[q][keep][:k]))
    return rows


class SearchIndex:
    """A loaded index directory. Changes (`add`, `remove`) stay in memory (a metadata delta
    over the generation's file) until `save` commits them; `log` makes them durable before
    (live.py: the write-ahead log, replayed by `load`)."""

    def __init__(
        self,
        index: faiss.Index,
        store: MetadataStore | MetadataDelta,
        manifest: IndexManifest,
        index_dir: Path,
        read_only: str | None = None,
    ) -> None:
        self.index = index
        self.manifest = manifest
        self.index_dir = Path(index_dir)
        self.read_only = read_only  # why add / remove are refused (mmap, on-disk), or None
        self.gpu_index: faiss.Index | None = None  # a GPU copy for unfiltered searches
        self._lists: Path | None = None  # on-disk inverted lists written by `commit_new`
        self._idmap: IdMap | None = None  # where each id sits in the on-disk lists
        self._store = store
        self._dirty = False  # changes not yet saved (in a MetadataDelta, or a new file)
        self.log: LiveLog | None = None  # the write-ahead log, attached by `load`
        self._selections: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()  # `select`
        self._changes = 0  # adds and removes so far: a selection is cached for one value
        self._selections_lock = threading.Lock()

    # ---- loading ----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        model_sha256: str | None = None,
        verify: Verify = "fast",
        mmap: bool = False,
    ) -> SearchIndex:
        """Load and check an index directory: sizes and checksums (`verify`: "fast", the ends
        of each file; "full", every byte), FAISS and metadata counts, dimension and, when
        given, the hash of the model that made it. `mmap` maps the FAISS file (read-only)."""
        index_dir = Path(index_dir)
        manifest = IndexManifest.load(index_dir)
        if not {"index", "metadata"} <= set(manifest.files) <= set(FILE_SUFFIX):
            raise IndexLoadError(
                f"{index_dir}: manifest files {sorted(manifest.files)}, expected index, "
                "metadata and, for on-disk inverted lists, lists and idmap"
            )
        paths = {}
        for role, record in manifest.files.items():
            paths[role] = index_dir / record.name
            record.check(paths[role], role, verify)
        on_disk = "lists" in paths
        index = _read_faiss(paths["index"], mmap, on_disk, ivf="IVF" in manifest.index_key)
        _check_faiss(index, manifest, paths["index"])
        try:
            store = MetadataStore(paths["metadata"])
        except MetadataError as e:
            raise IndexLoadError(str(e)) from e
        rows = store.count()
        if rows != index.ntotal:
            store.close()
            raise IndexLoadError(
                f"{paths['metadata']}: {rows} metadata rows but the FAISS index holds "
                f"{index.ntotal} vectors; expected one row per vector"
            )
        set_knob(index, manifest.index_params)
        read_only = None
        if on_disk:
            read_only = ON_DISK_READ_ONLY
        elif mmap:
            read_only = "it is memory-mapped (loaded with mmap); load it without mmap to change it"
        out = cls(index, store, manifest, index_dir, read_only)
        if "idmap" in paths:
            out._idmap = IdMap(paths["idmap"], manifest.count)
        replay(out)  # changes logged since this generation, and attach its log
        if model_sha256 is not None:
            out.check_model(model_sha256, manifest.dim)
        return out

    @classmethod
    def create(
        cls,
        index: faiss.Index,
        rows: list[dict[str, Any]],
        manifest: IndexManifest,
        index_dir: str | Path,
        overwrite: bool = False,
    ) -> SearchIndex:
        """Save a freshly built FAISS index and its rows as a new index directory (or, with
        `overwrite`, as the next generation of an existing one)."""
        generation = prepare_directory(index_dir, overwrite)
        store = new_metadata(index_dir, generation)
        store.insert(rows)
        store.index_fields(list(manifest.fields or {}))
        return cls.commit_new(index, store, manifest, index_dir, generation)

    @classmethod
    def commit_new(
        cls,
        index: faiss.Index,
        store: MetadataStore,
        manifest: IndexManifest,
        index_dir: str | Path,
        generation: int,
        lists: Path | None = None,
        idmap: Path | None = None,
    ) -> SearchIndex:
        """Save a built FAISS index, whose rows are in `store` (`new_metadata`), as generation
        `generation` (`prepare_directory`); `lists`: its on-disk inverted lists file, named
        `lists_path(index_dir, generation)`, and `idmap` the id map of those lists
        (`idmap_path`)."""
        manifest.generation = generation - 1
        out = cls(index, store, manifest, Path(index_dir))
        out._dirty = True
        out._lists = lists
        if idmap is not None:
            out._idmap = IdMap(idmap, index.ntotal)
        out.save()
        if lists is not None:
            out.read_only = ON_DISK_READ_ONLY
        return out

    def check_model(self, sha256: str, dim: int) -> None:
        """Raise IndexLoadError unless the vectors came from this model (dimension, hash)."""
        if dim != self.dim:
            raise IndexLoadError(
                f"{self.index_dir}: the model gives {dim}-d vectors but the index holds "
                f"{self.dim}-d vectors; use the model the index was built with"
            )
        if sha256 != self.manifest.model_sha256:
            raise IndexLoadError(
                f"{self.index_dir}: built from model sha256 {self.manifest.model_sha256}, not "
                f"the given model's {sha256}; embed with the same model or rebuild the index"
            )

    # ---- reading ----------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def supports_removal(self) -> bool:
        """Flat-code (Flat, PQ, SQ) and IVF indexes can remove ids; HNSW graphs cannot."""
        inner = inner_index(self.index)
        return isinstance(inner, faiss.IndexFlatCodes) or ivf_of(self.index) is not None

    @property
    def schema(self) -> Schema | None:
        """The items' typed fields (None: an index built before typed fields)."""
        fields = self.manifest.fields
        return None if fields is None else Schema(dict(fields))  # type: ignore[arg-type]

    def search(
        self,
        xq: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        filter: Filter | dict[str, Any] | str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores D and ids I [nq, k] of the k nearest stored vectors of each query.
        With `filter` (filters.py) and / or `allowed_ids`, only the items both keep are
        searched, inside FAISS or exactly (filtered.py): k results whenever k items match.
        Rows with fewer than k results end in id -1. Queries must be L2-normalised already
        (where they enter: the API's `normalise`, `coins search`, the ONNX runner); a row that
        is not is a ValueError; a bad filter a FilterError. Unfiltered searches go to
        `gpu_index` when there is one (`use_gpu`); FAISS GPU indexes take no ID selector, so
        filtered ones stay on the CPU."""
        xq = check_vectors(xq, self.dim, "queries")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if allowed_ids is None and filter is None:
            return (self.gpu_index or self.index).search(xq, k)
        given = None
        if allowed_ids is not None:
            given = np.unique(np.asarray(allowed_ids, dtype=np.int64).ravel())
        if filter is None:  # ids from the caller: any, the index may not hold them all
            assert given is not None
            return search_allowed(self.index, xq, k, given, self._vectors, self._held)
        chosen = self.select(filter)  # held ids, all of them
        allowed = chosen if given is None else np.intersect1d(chosen, given, assume_unique=True)
        return search_allowed(self.index, xq, k, allowed, self._vectors)

    def select(self, filter: Filter | dict[str, Any] | str | None) -> np.ndarray:
        """Ids (int64, ascending, read-only) of the items `filter` keeps (every item for None);
        a filter that does not fit the index (unknown field, wrong type) raises FilterError.

        **[design]** The last SELECTIONS_CACHED selections are kept until the next add or
        remove: reading half of a million rows' ids from SQLite takes ~0.2 s, and a catalogue's
        users repeat a few filters (in stock, a brand) far more often than anything changes.
        """
        f = parse_filter(filter) or Filter()
        where = compile_filter(f, self.schema, self._class_number)
        key = (self._changes, f.model_dump_json(exclude_none=True))
        with self._selections_lock:
            if key in self._selections:
                self._selections.move_to_end(key)
                return self._selections[key]
        ids = self._store.ids_matching(where)
        ids.flags.writeable = False
        with self._selections_lock:
            self._selections[key] = ids
            while len(self._selections) > SELECTIONS_CACHED:
                self._selections.popitem(last=False)
        return ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors [n, D] of `ids` (exact for Flat/IVF-Flat/HNSW, decoded for PQ)."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).ravel())
        missing = [int(i) for i, row in zip(ids, self._store.get(ids), strict=True) if row is None]
        if missing:
            raise UnknownIdError(f"ids not in the index: {missing[:10]}")
        return self._vectors(ids)

    def metadata(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        """The metadata row of each id (None for an id the index does not hold)."""
        return self._store.get(np.asarray(ids, dtype=np.int64))

    def metadata_json(self, ids: np.ndarray) -> list[str | None]:
        """`metadata` as the API's JSON text of each row (MetadataStore.get_json)."""
        return self._store.get_json(np.asarray(ids, dtype=np.int64))

    def ids_where(
        self, coarse: str | int | None = None, fine: str | int | None = None
    ) -> np.ndarray:
        """Ids whose labels match: a str is a class name, an int the class's position in the
        manifest's class list (the model's order for coarse classes when it has one)."""
        try:
            return self.select(
                label_filter(
                    coarse=None if coarse is None else [coarse],
                    fine=None if fine is None else [fine],
                )
            )
        except FilterError as e:
            raise ValueError(str(e).removeprefix("filter: ")) from None

    def labels(self) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        """All ids (ascending) with their coarse and fine class names."""
        return self._store.labels()

    # ---- changing ---------------------------------------------------------------------

    def use_gpu(self, gpu_index: faiss.Index | None) -> None:
        """Search (unfiltered) on this GPU copy of `index` (`coins.serve.index.gpu.to_gpu`)."""
        self.gpu_index = gpu_index

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]]) -> int:
        """Add vectors with new ids and their metadata rows; returns the new total."""
        self._check_writable("add")
        ids = check_ids(ids, len(rows))
        xb = check_vectors(vectors, self.dim, "vectors")
        if len(xb) != len(ids):
            raise IndexUpdateError(f"{len(ids)} ids but {len(xb)} vectors")
        schema = self.schema
        rows = check_rows(rows, ids, schema)
        taken = [int(i) for i, row in zip(ids, self._store.get(ids), strict=True) if row]
        if taken:
            raise IndexUpdateError(f"ids already in the index: {taken[:10]}")
        self._changed()
        self._writable().insert(rows)
        self.index.add_with_ids(xb, ids)
        if self.gpu_index is not None:
            self.gpu_index.add_with_ids(xb, ids)
        self._extend_classes(rows)
        if schema is not None:  # new fields join the schema (fields.Schema.extended)
            self.manifest.fields = dict(schema.extended(rows).fields)
        return self.ntotal

    def remove(self, ids: np.ndarray) -> int:
        """Remove `ids` (all must be present); returns how many were removed."""
        self._check_writable("remove")
        if not self.supports_removal:
            raise IndexUpdateError(
                f"index type {self.manifest.index_key!r} cannot remove vectors (FAISS HNSW "
                "graphs do not delete nodes); rebuild without these ids, or use flat/ivf/ivfpq"
            )
        ids = check_ids(ids, None)
        missing = [int(i) for i, row in zip(ids, self._store.get(ids), strict=True) if not row]
        if missing:
            raise UnknownIdError(f"ids not in the index: {missing[:10]}")
        self._changed()
        sel = faiss.IDSelectorArray(ids)  # an IVF's hash-table direct map takes only arrays
        removed = int(self.index.remove_ids(sel))
        deleted = self._writable().delete(ids)
        assert removed == deleted == len(ids), (removed, deleted, len(ids))
        if self.gpu_index is not None:  # GPU indexes cannot remove by id: copy again
            from coins.serve.index.gpu import to_gpu

            self.gpu_index = to_gpu(self.index)
        return removed

    def save(self) -> None:
        """Commit: write the next generation's files, then its manifest, then drop the old
        (and the logs it includes: it follows every log replayed or written)."""
        generation = max(self.manifest.generation, self.log.wal.generation if self.log else 0) + 1
        index_path = self.index_dir / _file_name("index", generation)
        with atomic_path(index_path) as tmp:
            faiss.write_index(self.index, str(tmp))
            _fsync(tmp)
        files = {"index": FileRecord.of(index_path)}
        if self._lists is not None:
            files["lists"] = FileRecord.of(self._lists)
        if self._idmap is not None:
            files["idmap"] = FileRecord.of(self._idmap.path)
        if isinstance(self._store, MetadataDelta):  # the base with the changes, as a new file
            self._store = self._store.write_to(self.index_dir / _file_name("metadata", generation))
        if self._dirty:
            self._store.close()  # flush and release, then hash what is on disk
            _fsync(self._store.path)
            files["metadata"] = FileRecord.of(self._store.path)
            self._store = MetadataStore(self._store.path)
        else:
            files["metadata"] = self.manifest.files["metadata"]
        self.manifest.files = files
        self.manifest.count = self.ntotal
        self.manifest.generation = generation
        self.manifest.updated = now_utc()
        self.manifest.save(self.index_dir)
        self._dirty = False
        if self.log is not None:
            self.log.wal.committed(generation)
        _remove_unreferenced(self.index_dir, self.manifest)

    # ---- internals --------------------------------------------------------------------

    def _check_writable(self, change: str) -> None:
        if self.read_only is not None:
            raise IndexUpdateError(
                f"cannot {change} items: the index is read-only, as {self.read_only}"
            )

    def _writable(self) -> MetadataStore | MetadataDelta:
        """Where changes go: a delta over the generation's file (made on the first change;
        `save` writes the next file), or the new file of `commit_new`."""
        if not self._dirty:
            self._store = MetadataDelta(self._store)
            self._dirty = True
        return self._store

    def _changed(self) -> None:
        """An add or remove begins: no cached selection holds from now on."""
        with self._selections_lock:
            self._changes += 1
            self._selections.clear()

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors [n, D] of held ids (int64)."""
        if len(ids) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if self._idmap is not None:
            return self._idmap.reconstruct(self.index, ids)
        return self.index.reconstruct_batch(ids)

    def _held(self, ids: np.ndarray) -> np.ndarray:
        """The ids (ascending, unique) of `ids` the index holds."""
        where = compile_filter(Filter(must=[HasId(has_id=ids.tolist())]), None)
        return self._store.ids_matching(where)  # not cached: a list of ids is rarely asked twice

    def _class_number(self, level: str, value: int) -> str:
        """Class number `value` of `level` as its name (FilterError when out of range)."""
        classes = self.manifest.classes.get(level) or []
        if not 0 <= value < len(classes):
            raise FilterError(
                f"filter: {level} class {value} out of range: the index has {len(classes)}"
            )
        return str(classes[value])

    def _extend_classes(self, rows: list[dict[str, Any]]) -> None:
        """New class names get the next numbers, so existing numbers keep their meaning."""
        for level in ("coarse", "fine"):
            known = self.manifest.classes.setdefault(level, [])
            for row in rows:
                name = row.get(level)
                if name is not None and str(name) not in known:
                    known.append(str(name))


def new_faiss_index(key: str, d: int) -> tuple[faiss.Index, str]:
    """An empty inner-product index for factory string `key`, ready for `add_with_ids`, and
    the key actually built: `IDMap2,` is put in front of keys without an inverted file."""
    index = _factory(key, d)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(_faiss.DirectMap.Hashtable)  # reconstruct and remove by id
        return index, key
    if _is_idmap(index):
        return index, key
    key = f"IDMap2,{key}"
    return _factory(key, d), key


def _factory(key: str, d: int) -> faiss.Index:
    try:
        return faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(
            f"not a FAISS factory string for d = {d}: {key!r} ({_first_line(e)})"
        ) from e


def check_vectors(x: np.ndarray, dim: int | None, what: str, normalise: bool = False) -> np.ndarray:
    """x as C-contiguous float32 [n, dim], finite; of unit norm (normalised if asked)."""
    x = np.asarray(x)
    if x.ndim == 1 and normalise:
        x = x[None, :]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{what} must be [n, {dim or 'D'}], got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} must be finite (no NaN or inf)")
    norm = np.linalg.norm(x, axis=1)  # [n]
    if normalise:
        if (norm == 0).any():
            raise ValueError(f"{what} must be non-zero to compare by cosine")
        return x / norm[:, None]
    if len(x) and np.abs(norm - 1).max() > NORM_TOL:
        bad = int(np.argmax(np.abs(norm - 1)))
        raise ValueError(f"{what} must be L2-normalised; row {bad} has norm {norm[bad]:.4f}")
    return x


def check_ids(ids: np.ndarray, n: int | None) -> np.ndarray:
    """ids as unique int64 [n]."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (n is not None and len(ids) != n):
        raise IndexUpdateError(f"ids must be 1-D with {n} entries, got shape {ids.shape}")
    if len(ids) and not np.issubdtype(ids.dtype, np.integer):
        raise IndexUpdateError(f"ids must be integers, got dtype {ids.dtype}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise IndexUpdateError(f"ids must be unique; repeated: {unique[counts > 1][:10].tolist()}")
    return ids


def check_rows(
    rows: list[dict[str, Any]], ids: np.ndarray, schema: Schema | None = None
) -> list[dict[str, Any]]:
    """Rows carry the ids, in order (a row without an id gets it), and fit `schema` (its
    fields' JSON types, a new field joining it: FieldError, a ValueError, naming the item and
    field)."""
    out = []
    for row, i in zip(rows, ids, strict=True):
        if row.get("id", int(i)) != int(i):
            raise IndexUpdateError(f"metadata row {row!r} does not have id {int(i)}")
        out.append({**row, "id": int(i)})
    return out if schema is None else schema.extended(out).check_rows(out)


def prepare_directory(index_dir: str | Path, overwrite: bool) -> int:
    """The generation a new index in `index_dir` will have (made if missing); an existing
    index there is an error unless `overwrite`."""
    index_dir = Path(index_dir)
    if (index_dir / MANIFEST_NAME).exists() and not overwrite:
        raise IndexUpdateError(
            f"{index_dir} already holds an index; append to it, or choose another directory"
        )
    index_dir.mkdir(parents=True, exist_ok=True)
    return _last_generation(index_dir) + 1


@contextlib.contextmanager
def new_generation(index_dir: str | Path, overwrite: bool) -> Iterator[int]:
    """`prepare_directory`'s generation, for a build that writes its files as it goes: if the
    block raises, every file of the generation is deleted (and `index_dir`, if this made it and
    nothing else is in it), so a failed build leaves the directory as it was."""
    existed = Path(index_dir).exists()
    generation = prepare_directory(index_dir, overwrite)
    try:
        yield generation
    except BaseException:
        if not _committed(index_dir, generation):  # else it stays, whatever failed after
            discard_generation(index_dir, generation)
            if not existed and not any(Path(index_dir).iterdir()):
                Path(index_dir).rmdir()
        raise


def _committed(index_dir: str | Path, generation: int) -> bool:
    try:
        return IndexManifest.load(Path(index_dir)).generation >= generation
    except IndexLoadError:
        return False


def discard_generation(index_dir: str | Path, generation: int) -> list[str]:
    """Delete every file of an uncommitted `generation` of `index_dir` (and their temporary
    names): what a failed build leaves. Returns the names removed."""
    removed = []
    for path in Path(index_dir).iterdir():
        m = _GENERATION_FILE.match(path.name) or _GENERATION_TMP.match(path.name)
        if m and int(m.group(2)) == generation:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


def new_metadata(index_dir: str | Path, generation: int) -> MetadataStore:
    """An empty metadata database for generation `generation` of `index_dir`."""
    path = Path(index_dir) / _file_name("metadata", generation)
    path.unlink(missing_ok=True)  # a leftover of a crashed save
    return MetadataStore(path, create=True)


def lists_path(index_dir: str | Path, generation: int) -> Path:
    """Where generation `generation`'s on-disk inverted lists go."""
    return Path(index_dir) / _file_name("lists", generation)


def idmap_path(index_dir: str | Path, generation: int) -> Path:
    """Where generation `generation`'s id map of on-disk lists goes (`idmap.py`)."""
    return Path(index_dir) / _file_name("idmap", generation)


def _read_faiss(
    path: Path, mmap: bool = False, on_disk: bool = False, ivf: bool = False
) -> faiss.Index:
    """Read a FAISS file; `mmap` maps IVF lists (IO_FLAG_MMAP) or else Flat codes
    (IO_FLAG_MMAP_IFC; FAISS takes one or the other, not both), and on-disk lists are found
    beside the file (not at the path they were written to)."""
    flags = 0
    if mmap and not on_disk:  # on-disk lists are mapped already; FAISS 1.15 crashes on both
        flags |= faiss.IO_FLAG_MMAP if ivf else faiss.IO_FLAG_MMAP_IFC
    if on_disk:
        flags |= faiss.IO_FLAG_ONDISK_SAME_DIR
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as e:
        raise IndexLoadError(f"{path}: not a readable FAISS index ({_first_line(e)})") from e


def _check_faiss(index: faiss.Index, manifest: IndexManifest, path: Path) -> None:
    if index.d != manifest.dim:
        raise IndexLoadError(f"{path}: dimension {index.d}, {MANIFEST_NAME} says {manifest.dim}")
    if index.ntotal != manifest.count:
        raise IndexLoadError(
            f"{path}: {index.ntotal} vectors, {MANIFEST_NAME} says {manifest.count}"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexLoadError(
            f"{path}: expected an inner-product index, got metric {index.metric_type}"
        )


def _is_idmap(index: faiss.Index) -> bool:
    return isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2)


def _file_name(role: str, generation: int) -> str:
    return f"{role}-{generation:06d}.{FILE_SUFFIX[role]}"


def _last_generation(index_dir: Path) -> int:
    """The highest generation named by the manifest or by any file in the directory."""
    found = [int(m.group(2)) for p in index_dir.iterdir() if (m := _GENERATION_FILE.match(p.name))]
    # no manifest, or an unreadable one being overwritten: the file names suffice
    with contextlib.suppress(IndexLoadError):
        found.append(IndexManifest.load(index_dir).generation)
    return max(found + log_generations(index_dir), default=0)


def _remove_unreferenced(index_dir: Path, manifest: IndexManifest) -> None:
    """Delete the files no save can commit any more: generation files the manifest does not
    name (older versions, crashed saves) and temporary files of killed saves.

    **[design]** A file of generation G, finished or temporary, is dead once G is at most the
    committed generation: the save that wrote it committed, or was killed. Files of later
    generations are kept, as another process's save may be writing them now; the save that
    commits their generation deletes them. A manifest's temporary file names no generation: it
    goes once it is STALE_TMP_SECONDS old (a manifest is written in milliseconds). The
    write-ahead log of generation G (live.py) is dead once a later generation is committed:
    that commit holds all of its changes.
    """
    for generation in log_generations(index_dir):
        if generation < manifest.generation:
            log_path(index_dir, generation).unlink(missing_ok=True)
    keep = {record.name for record in manifest.files.values()}
    for path in index_dir.iterdir():
        if m := _GENERATION_FILE.match(path.name) or _GENERATION_TMP.match(path.name):
            dead = int(m.group(2)) <= manifest.generation and path.name not in keep
        elif _MANIFEST_TMP.match(path.name):
            dead = _age_seconds(path) > STALE_TMP_SECONDS
        else:
            continue
        if dead:
            path.unlink(missing_ok=True)


def _age_seconds(path: Path) -> float:
    """Seconds since `path` was last written (0 if it is gone already)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__
