"""The manifest `index.json` of an index directory: what the index holds and how it was made.

It is the commit point of the directory: the FAISS file and the metadata database it names are
immutable once written, and replacing `index.json` (one atomic rename) switches the directory
from one version to the next. Everything a loader checks (checksums, counts, dimension, model)
is read from here.

**[design]** Each file has two checksums: `sha256` of all of it, and `fast_sha256` of its size,
first MiB and last MiB. A load checks sizes and the fast one (milliseconds for any size); a
full check (`verify="full"`, `coins serve --verify full`) reads everything, which for a 10 GB
index takes a minute. The fast check catches truncation, a replaced file and a damaged header or
tail, but not a flipped byte in the middle: that needs `verify="full"`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

from coins.retrieval.atomic import file_sha256, write_json

MANIFEST_NAME = "index.json"
# The files of one generation G, by role: `ROLE-GGGGGG.SUFFIX` (serve/index/store.py writes them)
FILE_SUFFIX = {"index": "faiss", "metadata": "sqlite", "lists": "ivfdata", "idmap": "npy"}
FORMAT_VERSION = 1
METRIC = "inner_product"  # on L2-normalised vectors: cosine similarity
FAST_BYTES = 2**20  # the fast check hashes this much from each end of a file
Verify = Literal["fast", "full"]
VERIFY_MODES: tuple[Verify, ...] = ("fast", "full")


class IndexLoadError(ValueError):
    """An index directory that cannot be loaded; the message names the file and the check."""


@dataclass(frozen=True)
class FileRecord:
    """One file of the index directory, by name (relative to it), size and content hash."""

    name: str
    sha256: str
    bytes: int
    fast_sha256: str = ""  # `fast_file_sha256`; empty in manifests written before it existed

    @classmethod
    def of(cls, path: Path) -> FileRecord:
        """Hash a written file."""
        return cls(
            name=path.name,
            sha256=file_sha256(path),
            bytes=path.stat().st_size,
            fast_sha256=fast_file_sha256(path),
        )

    def check(self, path: Path, role: str, verify: Verify) -> None:
        """Raise IndexLoadError unless `path` has this size and checksum: the fast one, or with
        `verify="full"` (or a record without a fast checksum) the sha256 of every byte."""
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        if not path.is_file():
            raise IndexLoadError(f"{path}: the {role} file named by {MANIFEST_NAME} is missing")
        size = path.stat().st_size
        if size != self.bytes:
            raise IndexLoadError(
                f"{path}: {size} bytes, {MANIFEST_NAME} says {self.bytes} (truncated or replaced)"
            )
        full = verify == "full" or not self.fast_sha256
        expected = self.sha256 if full else self.fast_sha256
        digest = file_sha256(path) if full else fast_file_sha256(path)
        if digest != expected:
            kind = "sha256" if full else "fast sha256 (size, first and last MiB)"
            raise IndexLoadError(
                f"{path}: checksum mismatch, {kind} {digest} but {MANIFEST_NAME} says "
                f"{expected} (the file was changed or is corrupt)"
            )


@dataclass(frozen=True)
class Tuning:
    """Search parameters chosen against exact search, and what they measured."""

    target_recall: float  # the 10-recall@10 asked for
    k: int  # the k of k-recall@k
    recall: float  # measured k-recall@k on the held-out queries
    reached: bool  # recall >= target_recall
    p50_ms: float  # single-query latency percentiles, one thread pool as configured
    p99_ms: float
    queries: int  # held-out queries used for recall
    count: int  # vectors in the index when measured (an append does not re-measure)


@dataclass
class IndexManifest:
    """Everything needed to load, check and rebuild an index directory."""

    dim: int
    index_key: str  # the FAISS factory string built, e.g. "IDMap2,Flat", "IVF1024,Flat"
    count: int  # vectors in the FAISS index, equal to the rows of the metadata database
    files: dict[str, FileRecord]  # "index" -> the FAISS file, "metadata" -> the SQLite file
    metric: str = METRIC
    requested_key: str = "auto"  # what the user asked for (flat, hnsw, ivf, ivfpq, auto, ...)
    choice_reason: str = ""  # why `auto` chose index_key
    index_params: dict[str, Any] = field(default_factory=dict)  # nprobe, efSearch
    tuning: Tuning | None = None
    model_sha256: str | None = None  # the ONNX model that produced the vectors
    preprocess: dict[str, Any] | None = None  # that model's preprocessing
    source: dict[str, Any] = field(default_factory=dict)  # data set / images / manifest / shards
    id_scheme: str | None = None  # how item ids were made: column, path-hash-v1, dataset
    roots: list[str] = field(default_factory=list)  # folders holding the gallery's image files
    # (`gallery_roots`): the server shows, and lets admins add, only images inside them
    classes: dict[str, list[str]] = field(default_factory=dict)  # "coarse"/"fine" -> names; the
    # position of a name is its label number in `SearchIndex.ids_where`
    fields: dict[str, str] | None = None  # the items' typed fields, name -> type (fields.py);
    # None in an index built before typed fields: its extra columns are untyped JSON
    created: str = ""  # ISO 8601, UTC
    updated: str = ""
    generation: int = 0  # incremented by every save; names the files of that version
    versions: dict[str, str] = field(default_factory=dict)  # faiss, numpy, coins, python
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> IndexManifest:
        """Parse a manifest; a missing or unknown field raises IndexLoadError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise IndexLoadError(f"{MANIFEST_NAME}: unknown field(s) {unknown}")
        if raw.get("format") != FORMAT_VERSION:
            raise IndexLoadError(
                f"{MANIFEST_NAME}: format {raw.get('format')!r}, expected {FORMAT_VERSION}"
            )
        try:
            values = dict(raw)
            values["files"] = {k: FileRecord(**v) for k, v in raw["files"].items()}
            if raw.get("tuning") is not None:
                values["tuning"] = Tuning(**raw["tuning"])
            return cls(**values)
        except (KeyError, TypeError, AttributeError) as e:
            raise IndexLoadError(f"{MANIFEST_NAME}: malformed ({e})") from e

    def save(self, index_dir: Path) -> None:
        """Write `index.json` atomically: the commit point of a save."""
        write_json(Path(index_dir) / MANIFEST_NAME, self.to_dict())

    @classmethod
    def load(cls, index_dir: Path) -> IndexManifest:
        path = Path(index_dir) / MANIFEST_NAME
        if not path.is_file():
            raise IndexLoadError(f"{path}: no index manifest (is {index_dir} an index directory?)")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexLoadError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise IndexLoadError(f"{path}: expected a JSON object")
        return cls.from_dict(raw)


def gallery_roots(
    source: dict[str, Any], rows: Iterable[dict[str, Any]] = (), known: Iterable[str] = ()
) -> list[str]:
    """The folders holding a gallery's image files, for `IndexManifest.roots`: the `known`
    ones, those the source names (a data set or image folder `root`, the folder of a CSV
    manifest `path`, and those of its `sources`), and the folder of each absolute row path
    outside them, symlinks resolved (the server compares resolved paths). A folder inside
    another is dropped, so the list stays short."""
    folders = [Path(f) for f in known] + _source_folders(source)
    folders += [
        Path(p).resolve().parent for r in rows if (p := r.get("path")) and Path(p).is_absolute()
    ]
    out: list[Path] = []
    for folder in sorted(set(folders), key=lambda f: len(f.parts)):  # outer folders first
        if not any(folder.is_relative_to(o) for o in out):
            out.append(folder)
    return sorted(str(f) for f in out)


def _source_folders(source: dict[str, Any]) -> list[Path]:
    folders = []
    if source.get("root"):
        root = Path(source["root"]).resolve()
        folders.append(root.parent if root.is_file() else root)  # a data set's CSV manifest
    if source.get("kind") == "manifest" and source.get("path"):
        folders.append(Path(source["path"]).resolve().parent)
    for inner in source.get("sources") or []:
        if isinstance(inner, dict):
            folders += _source_folders(inner)
    return folders


def fast_file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's size (8 bytes, little-endian), first and last FAST_BYTES."""
    size = Path(path).stat().st_size
    h = hashlib.sha256(size.to_bytes(8, "little"))
    with Path(path).open("rb") as f:
        h.update(f.read(FAST_BYTES))
        if size > FAST_BYTES:
            f.seek(max(FAST_BYTES, size - FAST_BYTES))
            h.update(f.read(FAST_BYTES))
    return h.hexdigest()


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of what wrote the index: a file from another FAISS may not read back."""
    import faiss
    import numpy as np

    try:
        coins_version = importlib_metadata.version("coins")
    except importlib_metadata.PackageNotFoundError:
        coins_version = "unknown"
    return {
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "coins": coins_version,
        "python": platform.python_version(),
    }


def new_manifest(source: dict[str, Any] | None, **fields: Any) -> IndexManifest:
    """The manifest of a new build from `source`, before the store records its files: the
    other `fields` as given, stamped with the time and the library versions."""
    return IndexManifest(
        files={}, source=source or {}, created=now_utc(), versions=library_versions(), **fields
    )
