"""Embedding shards (format v2): what one `coins embed` job writes, and how `coins index` reads it.

A job's folder OUT holds `embedding.json` (the job: model, gallery source, id scheme, items N,
chunk size C, chunks M) and, per chunk c (gallery positions [c*C, min((c+1)*C, N))):

- `chunk-000000.npy`: float32 [n, D] L2-normalised vectors (n = the chunk's items, less the
  skipped), read memory-mapped;
- `chunk-000000.parquet`: one row per vector, columns `id` int64, `path`, `coarse`, `fine`
  (strings or null) and `extra` (JSON of the other metadata columns): readable by any Arrow tool;
- `chunk-000000.json`, written LAST: the done marker, with each file's size and sha256 and the
  items skipped as undecodable. A chunk without it is unfinished and is redone by a re-run.

Every file is written atomically (`atomic_path`), so a crash leaves whole chunks or none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from .atomic import atomic_path, file_sha256, write_json
from .onnx.contract import EmbedError

FORMAT = "coins-embeddings"
VERSION = 2
MANIFEST = "embedding.json"
ROW_COLUMNS = ("id", "path", "coarse", "fine")  # the rest of a row goes to `extra` as JSON
UNCHECKED = ("created", "coins_version")  # may differ between a job and its re-run
Verify = Literal["fast", "full"]


def chunk_name(chunk: int) -> str:
    return f"chunk-{chunk:06d}"


def job_manifest(
    *,
    model_sha256: str,
    dim: int,
    which: str,
    preprocess: dict[str, Any],
    source: dict[str, Any],
    id_scheme: str,
    items: int,
    chunk_size: int,
) -> dict[str, Any]:
    """The contents of `embedding.json` for a job over `items` gallery items."""
    if chunk_size < 1:
        raise EmbedError(f"expected chunk_size >= 1, got {chunk_size}")
    return {
        "format": FORMAT, "version": VERSION, "model_sha256": model_sha256, "dim": dim,
        "which": which, "preprocess": preprocess, "source": source, "id_scheme": id_scheme,
        "items": items, "chunk_size": chunk_size, "chunks": -(-items // chunk_size),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "coins_version": __version__,
    }  # fmt: skip


def prepare_output(out: Path, manifest: dict[str, Any]) -> None:
    """Write `embedding.json`, or check that the one there describes the same job.

    Every rank may call this: the write is atomic and all ranks write the same job, so no rank
    waits for another. A different job (another model, gallery or chunk size) is refused: its
    chunks would not line up with the ones already there.
    """
    path = out / MANIFEST
    if not path.exists():
        write_json(path, manifest)
    found = read_manifest(path)
    differ = [k for k in manifest if k not in UNCHECKED and found.get(k) != manifest[k]]
    if differ:
        raise EmbedError(
            f"{path}: another job's output ({', '.join(differ)} differ); expected the same model, "
            "gallery and chunk size to resume, or an empty folder"
        )


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EmbedError(f"{path}: expected the {MANIFEST} of a coins embed job ({e})") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise EmbedError(f"{path}: expected a {FORMAT!r} job manifest of coins embed")
    if info.get("version") != VERSION:
        raise EmbedError(
            f"{path}: embeddings format version {info.get('version')!r}, expected {VERSION} "
            "(re-run coins embed with this version)"
        )
    return info


def write_chunk(
    out: Path,
    chunk: int,
    vectors: np.ndarray,
    rows: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    model_sha256: str,
) -> Path:
    """Write chunk `chunk`: vectors float32 [n, D], their `rows` (rows[i]["id"] is the id of
    vectors[i]) and the `skipped` items; the .json marker last. Returns its path."""
    n = len(rows)
    assert vectors.dtype == np.float32 and vectors.ndim == 2 and len(vectors) == n
    base = out / chunk_name(chunk)
    with atomic_path(base.with_suffix(".npy")) as tmp, tmp.open("wb") as file:
        np.save(file, vectors)
    with atomic_path(base.with_suffix(".parquet")) as tmp:
        pq.write_table(_rows_table(rows), tmp)
    written = (base.with_suffix(".npy"), base.with_suffix(".parquet"))
    files = {p.name: _file_info(p) for p in written}
    marker = {
        "chunk": chunk, "count": n, "dim": int(vectors.shape[1]), "model_sha256": model_sha256,
        "files": files, "skipped": skipped,
    }  # fmt: skip
    write_json(base.with_suffix(".json"), marker)
    return base.with_suffix(".json")


def _rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    def text(key: str) -> list[str | None]:
        return [None if r.get(key) is None else str(r[key]) for r in rows]

    extra = [json.dumps({k: v for k, v in r.items() if k not in ROW_COLUMNS}) for r in rows]
    return pa.table(
        {
            "id": pa.array([int(r["id"]) for r in rows], pa.int64()),
            "path": pa.array(text("path"), pa.string()),
            "coarse": pa.array(text("coarse"), pa.string()),
            "fine": pa.array(text("fine"), pa.string()),
            "extra": pa.array(extra, pa.string()),
        }
    )


def _file_info(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def check_chunk(
    out: Path, chunk: int, manifest: dict[str, Any], verify: Verify = "fast"
) -> dict[str, Any]:
    """The marker of a complete chunk, checked: its files exist with the recorded sizes (and
    sha256 when `verify` is "full"), the vectors' shape and the item count match the job.
    Raises EmbedError naming the file and what was expected."""
    if verify not in ("fast", "full"):
        raise EmbedError(f"expected verify 'fast' or 'full', got {verify!r}")
    path = out / f"{chunk_name(chunk)}.json"
    if not path.is_file():
        raise EmbedError(
            f"{path}: missing; expected {manifest['chunks']} finished chunks (re-run the same "
            "coins embed command to finish the job)"
        )
    try:
        marker = json.loads(path.read_text())
        count, files, skipped = marker["count"], marker["files"], marker["skipped"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise EmbedError(f"{path}: expected a chunk marker of coins embed ({e})") from e
    for key in ("model_sha256", "dim"):
        if marker.get(key) != manifest[key]:
            raise EmbedError(
                f"{path}: {key} {marker.get(key)!r}, expected the job's {manifest[key]!r}"
            )
    start = chunk * manifest["chunk_size"]
    expected = min(manifest["chunk_size"], manifest["items"] - start)
    if count + len(skipped) != expected:
        raise EmbedError(
            f"{path}: {count} embedded + {len(skipped)} skipped items, expected {expected}"
        )
    for name, want in files.items():
        _check_file(out / name, want, verify)
    vectors = out / f"{chunk_name(chunk)}.npy"
    shape = np.load(vectors, mmap_mode="r").shape  # reads the header only
    if shape != (count, manifest["dim"]):
        raise EmbedError(f"{vectors}: shape {shape}, expected ({count}, {manifest['dim']})")
    return marker


def _check_file(path: Path, want: dict[str, Any], verify: Verify) -> None:
    if not path.is_file():
        raise EmbedError(f"{path}: missing; expected {want['bytes']} bytes")
    size = path.stat().st_size
    if size != want["bytes"]:
        raise EmbedError(f"{path}: {size} bytes, expected {want['bytes']} (truncated or replaced)")
    if verify == "full" and file_sha256(path) != want["sha256"]:
        raise EmbedError(f"{path}: sha256 differs from the chunk marker's (corrupt)")


def chunk_done(out: Path, chunk: int, manifest: dict[str, Any], verify: Verify = "fast") -> bool:
    """Whether chunk `chunk` is complete and verifies (a re-run redoes it when not)."""
    try:
        check_chunk(out, chunk, manifest, verify)
    except EmbedError:
        return False
    return True


@dataclass
class Chunk:
    """One finished chunk: ids and vectors (memory-mapped), metadata rows on demand."""

    ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, D], memory-mapped
    parquet: Path

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> list[dict[str, Any]]:
        """Metadata rows as the gallery made them: id, path, coarse, fine and extra keys."""
        rows = []
        for r in pq.read_table(self.parquet).to_pylist():
            extra = json.loads(r.pop("extra") or "{}")
            rows.append(r | extra)
        return rows


@dataclass
class _Part:
    folder: Path
    chunk: int
    count: int


class EmbeddingSet:
    """The finished chunks of one or more `coins embed` folders of one model, read chunk by
    chunk; open with `open_embeddings`."""

    def __init__(
        self,
        manifests: list[tuple[Path, dict[str, Any]]],
        parts: list[_Part],
        skipped: list[dict[str, Any]],
    ) -> None:
        self._manifests = manifests
        self._parts = parts
        self._skipped = skipped
        first = manifests[0][1]
        self.dim: int = first["dim"]
        self.model_sha256: str = first["model_sha256"]
        self.count: int = sum(p.count for p in parts)

    def chunks(self) -> Iterator[Chunk]:
        for part in self._parts:
            base = part.folder / chunk_name(part.chunk)
            ids = pq.read_table(base.with_suffix(".parquet"), columns=["id"])["id"]
            yield Chunk(
                ids=ids.to_numpy().astype(np.int64, copy=False),
                vectors=np.load(base.with_suffix(".npy"), mmap_mode="r"),
                parquet=base.with_suffix(".parquet"),
            )

    def sample(self, n: int, seed: int) -> np.ndarray:
        """A uniform sample of min(n, count) vectors without replacement, float32 [m, D],
        gathered chunk by chunk (memory: the sample only)."""
        m = min(n, self.count)
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(self.count, size=m, replace=False))  # global positions
        out = np.empty((m, self.dim), np.float32)
        start, filled = 0, 0
        for chunk in self.chunks():
            end = start + len(chunk)
            lo, hi = np.searchsorted(picks, [start, end])
            out[filled : filled + hi - lo] = chunk.vectors[picks[lo:hi] - start]
            filled += hi - lo
            start = end
        assert filled == m
        return out

    @property
    def info(self) -> dict[str, Any]:
        """Provenance for an index manifest: model, sources, id scheme, counts, skipped."""
        first = self._manifests[0][1]
        sources = [m["source"] for _, m in self._manifests]
        schemes = sorted({m["id_scheme"] for _, m in self._manifests})
        return {k: first[k] for k in ("model_sha256", "dim", "which", "preprocess")} | {
            "sources": [s for i, s in enumerate(sources) if s not in sources[:i]],
            "id_scheme": schemes[0] if len(schemes) == 1 else "+".join(schemes),
            "count": self.count,
            "chunks": len(self._parts),
            "skipped": self._skipped,
        }


def open_embeddings(dirs: Path | Sequence[Path], verify: Verify = "fast") -> EmbeddingSet:
    """The finished jobs in `dirs`, checked: every chunk complete and verified (sizes, or
    sha256 too with "full"), one model (sha256 and dim) in all folders, no id twice."""
    folders = [Path(dirs)] if isinstance(dirs, str | Path) else [Path(d) for d in dirs]
    if not folders:
        raise EmbedError("expected at least one coins embed folder")
    manifests = []
    for folder in folders:
        if not (folder / MANIFEST).is_file():
            raise EmbedError(f"{folder}: no {MANIFEST}; expected the output folder of coins embed")
        manifests.append((folder, read_manifest(folder / MANIFEST)))
    _check_same_model(manifests)
    parts, skipped = [], []
    for folder, manifest in manifests:
        for c in range(manifest["chunks"]):
            marker = check_chunk(folder, c, manifest, verify)
            parts.append(_Part(folder, c, marker["count"]))
            skipped += marker["skipped"]
    found = EmbeddingSet(manifests, parts, skipped)
    _check_unique_ids(found)
    return found


def _check_same_model(manifests: list[tuple[Path, dict[str, Any]]]) -> None:
    first_path, first = manifests[0]
    for path, info in manifests[1:]:
        for key in ("model_sha256", "dim"):
            if info[key] != first[key]:
                raise EmbedError(
                    f"embeddings disagree on {key}: {first_path} has {first[key]!r}, "
                    f"{path} has {info[key]!r}; expected embeddings of one model"
                )


def _check_unique_ids(found: EmbeddingSet) -> None:
    """Ids are unique within a job (the gallery refuses repeats), not across jobs: a folder
    given twice, or two galleries that share files, would repeat them."""
    ids = np.concatenate([c.ids for c in found.chunks()] or [np.empty(0, np.int64)])
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise EmbedError(
            f"ids repeat across the embedding folders, e.g. {unique[counts > 1][:5].tolist()}; "
            "expected each item in one folder only"
        )
