"""Build an index directory: from vectors, from an ONNX model and a gallery, or from shards.

`build_index` chooses the FAISS index (`choose_index`), trains it on a seeded sample, adds the
vectors with their ids, tunes nprobe / efSearch against exact search (`tune`) and saves the
directory. The two other entry points only gather ids, vectors, rows and provenance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from coins.serve.index.choice import choose_index, train_size
from coins.serve.index.fields import infer_schema
from coins.serve.index.manifest import Tuning, Verify, gallery_roots, new_manifest
from coins.serve.index.store import (
    IndexUpdateError,
    SearchIndex,
    check_ids,
    check_rows,
    check_vectors,
    new_faiss_index,
)
from coins.serve.index.tuning import ground_truth, tune

TUNE_QUERIES = 1000  # held-out queries for tuning (a sample of the vectors, added after)
TUNE_K = 10  # tuning targets 10-recall@10
ADD_BLOCK = 65536  # vectors per add_with_ids call


class IndexBuildError(ValueError):
    """An index that cannot be built from these vectors (e.g. too few to train it)."""


def build_index(
    ids: np.ndarray,
    vectors: np.ndarray,
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    index_key: str = "auto",
    model_sha256: str | None = None,
    preprocess: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    target_recall: float = 0.95,
    max_memory: int | None = None,
    classes: dict[str, list[str]] | None = None,
    tune_queries: int = TUNE_QUERIES,
    overwrite: bool = False,
    seed: int = 0,
    fields: Mapping[str, str] | None = None,
) -> SearchIndex:
    """Build, tune and save an index of L2-normalised `vectors` [n, D] with int64 `ids` [n] and
    one metadata row each. `index_key`: auto, flat, hnsw, ivf, ivfpq or a FAISS factory string.
    `classes` numbers the class names (default: sorted names of the rows). The rows' columns
    beyond id/path/coarse/fine/split are typed fields: `fields` declares types (name -> int,
    float, bool, string, timestamp), the others are inferred (fields.py)."""
    xb = check_vectors(vectors, None, "vectors")
    ids = check_ids(ids, len(xb))
    schema = infer_schema(rows, fields)
    rows = schema.parse_rows(check_rows(rows, ids))
    n, d = xb.shape
    choice = choose_index(index_key, n, d, max_memory)
    index, key = new_faiss_index(choice.key, d)
    rng = np.random.default_rng(seed)
    _train(index, key, xb, rng)
    params, tuning = _add_and_tune(index, ids, xb, rng, tune_queries, target_recall)
    manifest = new_manifest(
        source,
        dim=d,
        index_key=key,
        count=n,
        requested_key=index_key,
        choice_reason=choice.reason,
        index_params=params,
        tuning=tuning,
        model_sha256=model_sha256,
        preprocess=preprocess,
        id_scheme=(source or {}).get("id_scheme"),
        roots=gallery_roots(source or {}, rows),
        classes=classes or class_lists(rows),
        fields=dict(schema.fields),
    )
    return SearchIndex.create(index, rows, manifest, out_dir, overwrite=overwrite)


def _add_and_tune(
    index: faiss.Index,
    ids: np.ndarray,
    xb: np.ndarray,
    rng: np.random.Generator,
    tune_queries: int,
    target_recall: float,
) -> tuple[dict[str, int], Tuning | None]:
    """Add all vectors; tune on a sample of them held out until tuning is done.

    The queries are added after tuning, not before: an HNSW search that starts from a graph
    holding the query itself finds its neighbours more easily than a new query would, and the
    recall measured so overestimates (by 0.005 at 1M vectors in benchmarks/bench_index.py).
    """
    n = len(xb)
    nq = min(tune_queries, n // 10)  # a tenth at most: tiny indexes keep most of their items
    if nq < 1:
        index.add_with_ids(xb, ids)
        return {}, None
    held_out = np.zeros(n, dtype=bool)
    held_out[rng.choice(n, size=nq, replace=False)] = True
    for start in range(0, n, ADD_BLOCK):  # in blocks: no copy of all of xb
        block = slice(start, start + ADD_BLOCK)
        index.add_with_ids(xb[block][~held_out[block]], ids[block][~held_out[block]])
    xq = xb[held_out]  # [nq, D]
    gt = ground_truth(xq, xb, ids, min(TUNE_K, n - nq), keep=~held_out)
    params, tuning = tune(index, xq, gt, target_recall)
    index.add_with_ids(xq, ids[held_out])
    return params, tuning


def _train(index: faiss.Index, key: str, xb: np.ndarray, rng: np.random.Generator) -> None:
    """Train on a seeded sample of the vectors (k-means of IVF, PQ codebooks)."""
    if index.is_trained:
        return
    size = train_size(key, len(xb)) or len(xb)
    sample = xb[np.sort(rng.choice(len(xb), size=size, replace=False))]
    try:
        index.train(sample)
    except RuntimeError as e:
        raise IndexBuildError(
            f"cannot train {key!r} on {size:,} of {len(xb):,} vectors: {str(e).splitlines()[-1]}"
        ) from e


def class_lists(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Sorted class names per level, from the rows."""
    return {
        level: sorted({str(r[level]) for r in rows if r.get(level) is not None})
        for level in ("coarse", "fine")
    }


def append_to_index(
    index_dir: str | Path,
    ids: np.ndarray,
    vectors: np.ndarray,
    rows: list[dict[str, Any]],
    model_sha256: str | None = None,
    source: dict[str, Any] | None = None,
    fields: Mapping[str, str] | None = None,
) -> SearchIndex:
    """Add items to an existing index directory and save it; the model must be the same, and
    the rows' fields the index's (`fields` declares types, as in `build_index`).
    `source` is the gallery they come from (its folders join the manifest's `roots`)."""
    index = SearchIndex.load(index_dir, model_sha256=model_sha256)
    _add_and_save(index, ids, vectors, append_rows(index, rows, fields), source)
    return index


def append_rows(
    index: SearchIndex, rows: list[dict[str, Any]], fields: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Rows joining `index`, typed by its schema; FieldError (a ValueError) naming the
    difference when their fields are not the index's. An index without a schema (built before
    typed fields) takes rows as they are, untyped, and no declared `fields`."""
    schema = index.schema
    if schema is None:
        if fields:
            raise IndexUpdateError(
                f"{index.index_dir} records no field schema (built before typed fields): "
                "rebuild it to declare fields"
            )
        return rows
    return schema.conform(rows, fields)


def _add_and_save(
    index: SearchIndex,
    ids: np.ndarray,
    vectors: np.ndarray,
    rows: list[dict[str, Any]],
    source: dict[str, Any] | None,
) -> None:
    """Add items and save; the folders of their images join the manifest's `roots` (an
    operator's append is trusted, unlike an admin add over HTTP, which must stay inside)."""
    index.add(ids, vectors, rows)
    index.manifest.roots = gallery_roots(source or {}, rows, index.manifest.roots)
    index.save()


def remove_from_index(index_dir: str | Path, ids: np.ndarray) -> SearchIndex:
    """Remove ids from an index directory and save it (refused by HNSW indexes)."""
    index = SearchIndex.load(index_dir)
    index.remove(ids)
    index.save()
    return index


def build_index_from_embeddings(
    dirs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    append: bool = False,
    verify: Verify = "fast",
    **options: Any,
) -> SearchIndex:
    """Build (or, with `append`, extend) an index from `coins embed` folders, chunk by chunk
    (`coins.serve.index.stream`); `verify` checks the chunks' sizes ("fast") or hashes too."""
    from coins.retrieval.shards import open_embeddings
    from coins.serve.index.stream import append_from_source, build_from_source

    folders = [Path(dirs)] if isinstance(dirs, str | Path) else [Path(d) for d in dirs]
    embeddings = open_embeddings(folders, verify=verify)
    sources = embeddings.info["sources"]
    if append:
        return append_from_source(embeddings, out_dir, {"sources": sources}, **options)
    source: dict[str, Any] = {"embeddings": [str(f.resolve()) for f in folders]}
    source |= sources[0] if len(sources) == 1 else {"kind": "embeddings", "sources": sources}
    return build_from_source(embeddings, out_dir, source=source, **options)


def build_index_from_model(
    model_path: str | Path,
    out_dir: str | Path,
    dataset: str | None = None,
    split: str | None = None,
    root: str | Path | None = None,
    dataset_options: dict[str, Any] | None = None,
    images: str | Path | None = None,
    manifest: str | Path | None = None,
    append: bool = False,
    replace: bool = False,
    batch_size: int = 64,
    strict: bool = False,
    threads: int | None = None,
    progress: bool = True,
    fields: Mapping[str, str] | None = None,
    log: Any = None,
    cut: tuple[float, str, int] = (0.0, "item", 0),
    **options: Any,
) -> tuple[SearchIndex, list[tuple[Path, str]]]:
    """Embed a gallery (a data set split, a folder of images or a CSV manifest) with an ONNX
    model and build (or extend) an index of it. Also returns the images skipped as
    undecodable (an error instead when `strict`).

    With `append`, items whose id the index holds already are left as they are (not even
    embedded); with `replace` too, they are embedded again and replace the stored ones (for
    files changed in place: a path-hash id stays with its path). `cut` (test fraction, split
    by, seed) cuts a gallery without splits as `coins train --test-fraction` did."""
    from coins.retrieval.onnx.runner import OnnxEmbedder, embed_items, gallery_source

    model = OnnxEmbedder(model_path, threads=threads)
    gallery = gallery_source(dataset, split, root, dataset_options, images, manifest, *cut)
    existing, present = None, np.zeros(len(gallery), dtype=bool)
    if append:  # check before embedding: a wrong model would waste the whole pass
        existing = SearchIndex.load(out_dir, model_sha256=model.sha256)
        present = np.array([m is not None for m in existing.metadata(gallery.ids)], dtype=bool)
        say = log or (lambda line: None)
        if not replace:
            say(f"{int(present.sum()):,} of {len(gallery):,} items are in the index already: "
                "skipped (left as they are; --replace embeds them again)")  # fmt: skip
            gallery, present = gallery.subset(np.flatnonzero(~present)), present[~present]
        elif present.any() and not existing.supports_removal:
            raise IndexUpdateError(f"{out_dir}: this index cannot remove ids, so cannot replace")
        else:
            say(f"{int(present.sum()):,} of {len(gallery):,} items are in the index already: "
                "embedded again, replacing the stored ones")  # fmt: skip
    elif (Path(out_dir) / "index.json").exists() and not options.get("overwrite"):
        raise IndexUpdateError(f"{out_dir} already holds an index; pass append, or another dir")
    if existing is not None:  # check the fields before embedding too
        append_rows(existing, gallery.rows, fields)
    done = embed_items(model, gallery, batch_size, strict, progress)
    ids, rows = done.ids, done.rows
    failed = [(Path(s["path"]), s["reason"]) for s in done.skipped]
    if existing is not None:
        if present.any():  # replace: removed only now, once their new vectors are ready
            existing.remove(gallery.ids[present])
        if len(ids):
            rows = append_rows(existing, rows, fields)
            _add_and_save(existing, ids, done.vectors, rows, gallery.source)
        return existing, failed
    index = build_index(
        ids,
        done.vectors,
        rows,
        out_dir,
        model_sha256=model.sha256,
        preprocess=model.metadata.get("preprocess"),
        # where the model's backbone weights came from (pretrained name or file, sha256)
        source={**gallery.source, "weights_origin": model.metadata.get("weights_origin")},
        classes=model_classes(model.coarse_classes, rows),
        fields=fields,
        **options,
    )
    return index, failed


def model_classes(coarse: list[str] | None, rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Class numbering: the model's coarse classes in its order (then names only the rows
    have), sorted names otherwise."""
    classes = class_lists(rows)
    if coarse:
        extra = [c for c in classes["coarse"] if c not in coarse]
        classes["coarse"] = [str(c) for c in coarse] + extra
    return classes


def build_gallery_index(
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    from_embeddings: Sequence[str | Path] | None = None,
    dataset: str | None = None,
    split: str | None = None,
    root: str | Path | None = None,
    dataset_options: dict[str, Any] | None = None,
    images: str | Path | None = None,
    manifest: str | Path | None = None,
    index_key: str = "auto",
    target_recall: float = 0.95,
    max_memory_gb: float | None = None,
    append: bool = False,
    replace: bool = False,
    overwrite: bool = False,
    batch_size: int = 64,
    threads: int | None = None,
    strict: bool = False,
    progress: bool = True,
    on_disk: bool = False,
    verify: Verify = "fast",
    log: Any = None,
    fields: Mapping[str, str] | None = None,
    test_fraction: float = 0.0,
    split_by: str = "item",
    split_seed: int = 0,
) -> tuple[SearchIndex, list[tuple[Path, str]]]:
    """`coins index`: an index of a gallery embedded by an ONNX `model`, or of the shard folders
    of `coins embed` (exactly one of the two); with the images skipped as undecodable.

    With `append` the items join the index in `out_dir`, whose choice and tuning stay.
    `on_disk` (shard folders only) keeps the IVF lists in a file; `verify` is how the shards
    are checked; `log` gets the progress lines of a build from shards. `fields` declares the
    types of fields (name -> type); the others are inferred from the rows (fields.py).
    `test_fraction`, `split_by`, `split_seed` cut a gallery without splits as `coins train
    --test-fraction` did (retrieval/gallery.py), so that `split` test indexes its held-out side.
    """
    if (model is None) == (not from_embeddings):
        given = "both" if model is not None else "neither"
        raise ValueError(
            f"expected an ONNX model (with a gallery) or from_embeddings shard folders; got {given}"
        )
    if test_fraction and from_embeddings:
        raise ValueError("test_fraction cuts a gallery embedded here: cut shards with coins embed")
    if on_disk and (model is not None or append):
        raise ValueError("on_disk builds a new index from from_embeddings shard folders only")
    options: dict[str, Any] = {"append": append, "fields": fields}
    if not append:
        memory = None if max_memory_gb is None else int(max_memory_gb * 2**30)
        options |= {"index_key": index_key, "target_recall": target_recall}
        options |= {"max_memory": memory, "overwrite": overwrite}
    if from_embeddings:
        if not append:
            options |= {"on_disk": on_disk, "log": log}
        index = build_index_from_embeddings(from_embeddings, out_dir, verify=verify, **options)
        return index, []
    assert model is not None
    if append:
        options["log"] = log
    return build_index_from_model(
        model, out_dir, dataset, split, root, dataset_options, images, manifest, replace=replace,
        batch_size=batch_size, strict=strict, threads=threads, progress=progress,
        cut=(test_fraction, split_by, split_seed), **options,
    )  # fmt: skip


def build_summary(index: SearchIndex, before: int | None = None) -> tuple[str, list[str]]:
    """What was built, in a line or two (size, FAISS key and why, tuning), and warnings; for an
    append, `before` is the count the index had, and the key and tuning are the build's."""
    m = index.manifest
    lines = [f"{m.count:,} vectors of dimension {m.dim}, {m.index_key} ({m.choice_reason})"]
    if before is not None:
        lines = [
            f"added {m.count - before:,} vectors: {before:,} -> {m.count:,} of dimension {m.dim}",
            f"{m.index_key}, as built (chosen for the build's items: {m.choice_reason})",
        ]
    warnings = []
    if m.tuning is not None:
        t, params = m.tuning, ", ".join(f"{k}={v}" for k, v in m.index_params.items())
        lines.append(
            f"{params or 'exact'}: {t.k}-recall@{t.k} {t.recall:.4f} on {t.queries} held-out "
            f"queries, p50 {t.p50_ms:.3f} ms, p99 {t.p99_ms:.3f} ms"
        )
        if not t.reached:
            warnings.append(f"target recall {t.target_recall} not reached")
    return "\n".join(lines), warnings
