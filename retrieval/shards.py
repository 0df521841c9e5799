"""Embedding shards: a gallery embedded in pieces, on many machines, for `coins index`.

`coins embed --shard I/N -o DIR` writes DIR/shard-IIIII-of-NNNNN.npz (ids, vectors), .jsonl
(one metadata row per id) and .json (model, source, count); `read_embedding_shards` joins
them back, checking that they come from one model and that no shard is missing or repeated.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coins.retrieval.onnx.runner import EmbedError, OnnxEmbedder

from .. import __version__
from .atomic import atomic_path, write_json
from .gallery import Gallery

SHARD_FORMAT = "coins-embeddings"
SHARD_VERSION = 1


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` as (I, N), with 0 <= I < N."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise ValueError(f"expected a shard I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return i, n


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


@dataclass
class GalleryEmbedding:
    """A gallery's embeddings: the good items' ids, vectors and rows, and what was skipped."""

    ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, D], L2-normalised
    rows: list[dict[str, Any]]  # [n] metadata rows, in the order of ids
    skipped: list[dict[str, Any]]  # {"id", "path", "reason"} of each undecodable file


def embed_items(
    model: OnnxEmbedder,
    gallery: Gallery,
    batch_size: int = 64,
    strict: bool = False,
    progress: bool = True,
) -> GalleryEmbedding:
    """Embed every item of `gallery`; undecodable files are skipped and listed, or raise
    EmbedError when `strict`."""
    if gallery.paths is not None:
        result, failed = model.embed_files(gallery.paths, batch_size, strict, progress)
    else:
        result, failed = model.embed_dataset(gallery, batch_size, progress), []
    failed_rows = np.setdiff1d(np.arange(len(gallery)), result.rows)  # ascending, as `failed`
    skipped = [
        {"id": int(gallery.ids[i]), "path": str(p), "reason": reason}
        for i, (p, reason) in zip(failed_rows, failed, strict=True)
    ]
    rows = [gallery.rows[i] for i in result.rows]
    return GalleryEmbedding(gallery.ids[result.rows], result.vectors, rows, skipped)


def embed_gallery(
    model: OnnxEmbedder,
    gallery: Gallery,
    out_dir: str | Path,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 64,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed shard I of N of `gallery` (positions i % N == I) and write its three files;
    returns the shard's info (also in its .json), "skipped" listing undecodable files."""
    index, count = shard
    done = embed_items(model, gallery.shard(index, count), batch_size, strict, progress)
    info = {
        "model": str(model.path),
        "model_sha256": model.sha256,
        "dim": model.dim,
        "which": model.which,
        "preprocess": model.metadata["preprocess"],
        "source": gallery.source,
        "shard": {"index": index, "count": count, "scheme": "i % count == index"},
        "skipped": done.skipped,
    }
    write_embedding_shard(out_dir, index, count, done.ids, done.vectors, done.rows, info)
    return info | {"count": len(done.ids)}


def write_embedding_shard(
    out_dir: str | Path,
    index: int,
    count: int,
    ids: np.ndarray,
    vectors: np.ndarray,
    rows: list[dict[str, Any]],
    info: dict[str, Any],
) -> Path:
    """Write the .npz (ids, vectors), .jsonl (rows) and, last, the .json (info) of a shard,
    each atomically; returns the .json path."""
    n = len(ids)
    assert ids.dtype == np.int64 and ids.shape == (n,) and vectors.shape[0] == n == len(rows)
    assert all(r["id"] == int(i) for r, i in zip(rows, ids, strict=True)), "rows follow ids"
    base = Path(out_dir) / shard_name(index, count)
    with atomic_path(base.with_suffix(".npz")) as tmp, tmp.open("wb") as file:
        np.savez(file, ids=ids, vectors=vectors.astype(np.float32))
    with atomic_path(base.with_suffix(".jsonl")) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta = {"format": SHARD_FORMAT, "version": SHARD_VERSION, **info, "count": n}
    write_json(base.with_suffix(".json"), meta | {"created": created, "coins_version": __version__})
    return base.with_suffix(".json")


def read_embedding_shards(
    dirs: str | Path | Iterable[str | Path],
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """All shards under `dirs`: ids int64 [N], vectors float32 [N, D], metadata rows [N] and
    their common info. All shards must come from one model (sha256, dim), every source's
    shards 0..N-1 must all be there once, and ids must be unique."""
    folders = [Path(dirs)] if isinstance(dirs, str | Path) else [Path(d) for d in dirs]
    infos = [(p, _read_shard_info(p)) for d in folders for p in sorted(d.glob("shard-*.json"))]
    if not infos:
        raise EmbedError(f"{[str(d) for d in folders]}: no shard-*.json files of coins embed")
    _check_same_model(infos)
    _check_complete(infos)
    parts = [_read_shard_arrays(p, info) for p, info in infos]
    ids = np.concatenate([p[0] for p in parts])
    vectors = np.concatenate([p[1] for p in parts])
    rows = [r for p in parts for r in p[2]]
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise EmbedError(f"shards in {folders}: ids repeat, e.g. {unique[counts > 1][:5].tolist()}")
    first = infos[0][1]
    sources = [info["source"] for _, info in infos]
    info = {k: first[k] for k in ("model_sha256", "dim", "which", "preprocess")} | {
        "sources": [s for i, s in enumerate(sources) if s not in sources[:i]],
        "count": len(ids),
        "shards": len(infos),
        "skipped": [s for _, i in infos for s in i["skipped"]],
    }
    return ids, vectors, rows, info


def _read_shard_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EmbedError(f"{path}: expected a shard info JSON file ({e})") from e
    if not isinstance(info, dict) or info.get("format") != SHARD_FORMAT:
        raise EmbedError(f"{path}: expected a {SHARD_FORMAT!r} shard info file of coins embed")
    if info.get("version") != SHARD_VERSION:
        raise EmbedError(f"{path}: shard version {info.get('version')!r}, expected {SHARD_VERSION}")
    return info


def _check_same_model(infos: list[tuple[Path, dict[str, Any]]]) -> None:
    first_path, first = infos[0]
    for path, info in infos[1:]:
        for key in ("model_sha256", "dim"):
            if info[key] != first[key]:
                raise EmbedError(
                    f"shards disagree on {key}: {first_path} has {first[key]!r}, "
                    f"{path} has {info[key]!r}; expected shards of one model"
                )


def _check_complete(infos: list[tuple[Path, dict[str, Any]]]) -> None:
    """Each source's shards must be 0..N-1, each exactly once."""
    groups: dict[str, list[int]] = {}
    for _, info in infos:
        key = json.dumps([info["source"], info["shard"]["count"]], sort_keys=True)
        groups.setdefault(key, []).append(info["shard"]["index"])
    for key, found in groups.items():
        source, count = json.loads(key)
        if sorted(found) != list(range(count)):
            missing = sorted(set(range(count)) - set(found))
            repeated = sorted({i for i in found if found.count(i) > 1})
            raise EmbedError(
                f"shards of {source}: expected each of 0..{count - 1} once; "
                f"missing {missing}, repeated {repeated}"
            )


def _read_shard_arrays(
    path: Path, info: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    base = path.with_suffix("")
    try:
        with np.load(base.with_suffix(".npz")) as arrays:
            ids, vectors = arrays["ids"], arrays["vectors"]
        lines = base.with_suffix(".jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:  # missing, truncated, bad JSON
        raise EmbedError(
            f"{base}.npz/.jsonl: expected the shard's ids, vectors and rows ({e})"
        ) from e
    n, dim = info["count"], info["dim"]
    if ids.dtype != np.int64 or ids.shape != (n,) or vectors.shape != (n, dim):
        raise EmbedError(
            f"{base}.npz: expected ids int64 [{n}] and vectors [{n}, {dim}], "
            f"got {ids.dtype} {ids.shape} and {vectors.shape}"
        )
    if len(rows) != n or any(r.get("id") != int(i) for r, i in zip(rows, ids, strict=False)):
        raise EmbedError(f"{base}.jsonl: expected {n} rows with the ids of the .npz, in order")
    return ids, vectors.astype(np.float32, copy=False), rows
