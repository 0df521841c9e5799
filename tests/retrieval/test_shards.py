"""Shards v2: chunks written and read back, and every way a set of them can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from coins.retrieval.onnx.contract import EmbedError
from coins.retrieval.shards import (
    chunk_done,
    job_manifest,
    open_embeddings,
    prepare_output,
    write_chunk,
)

D = 8


def write_job(out: Path, items: int, chunk_size: int, first_id: int = 0, sha: str = "a" * 64):
    """A finished job of `items` random unit vectors with ids first_id, first_id + 1, ..."""
    manifest = job_manifest(
        model_sha256=sha, dim=D, which="backbone", preprocess={"input_size": 8},
        source={"kind": "images", "root": str(out)}, id_scheme="path-hash-v1",
        items=items, chunk_size=chunk_size,
    )  # fmt: skip
    prepare_output(out, manifest)
    rng = np.random.default_rng(first_id)
    xb = rng.standard_normal((items, D)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    for c in range(manifest["chunks"]):
        part = range(c * chunk_size, min((c + 1) * chunk_size, items))
        rows = [
            {"id": first_id + i, "path": f"/g/{i}.jpg", "coarse": "shoes", "fine": None, "sku": i}
            for i in part
        ]
        write_chunk(out, c, xb[part.start : part.stop], rows, [], sha)
    return manifest, xb


def test_chunks_read_back_as_written(tmp_path) -> None:
    manifest, xb = write_job(tmp_path, items=10, chunk_size=4)
    found = open_embeddings(tmp_path)
    chunks = list(found.chunks())
    assert manifest["chunks"] == 3 and [len(c) for c in chunks] == [4, 4, 2]
    assert found.count == 10 and found.dim == D and found.model_sha256 == "a" * 64
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), np.arange(10))
    np.testing.assert_array_equal(np.concatenate([c.vectors for c in chunks]), xb)
    assert isinstance(chunks[0].vectors, np.memmap)
    assert chunks[2].rows()[1] == {"id": 9, "path": "/g/9.jpg", "coarse": "shoes", "fine": None,
                                   "sku": 9}  # fmt: skip
    info = found.info
    assert info["id_scheme"] == "path-hash-v1" and info["chunks"] == 3 and info["count"] == 10
    table = pq.read_table(tmp_path / "chunk-000000.parquet")  # any Arrow tool reads it
    assert table.column_names == ["id", "path", "coarse", "fine", "extra"]


def test_sample_is_uniform_without_replacement(tmp_path) -> None:
    _, xb = write_job(tmp_path, items=50, chunk_size=7)
    found = open_embeddings(tmp_path)
    sample = found.sample(20, seed=3)
    # each sampled vector is one of xb, no row twice
    rows = [int(np.flatnonzero((xb == v).all(axis=1))[0]) for v in sample]
    assert len(set(rows)) == 20
    np.testing.assert_array_equal(found.sample(20, seed=3), sample)  # seeded
    assert found.sample(500, seed=0).shape == (50, D)
    # uniform: over many seeds every item is drawn about 20/50 of the time
    hits = np.zeros(50)
    for seed in range(300):
        s = found.sample(20, seed=seed)
        hits[[int(np.flatnonzero((xb == v).all(axis=1))[0]) for v in s]] += 1
    assert np.abs(hits / 300 - 0.4).max() < 0.15


def test_a_truncated_or_missing_chunk_file_is_refused_naming_it(tmp_path) -> None:
    write_job(tmp_path, items=10, chunk_size=4)
    npy = tmp_path / "chunk-000001.npy"
    npy.write_bytes(npy.read_bytes()[:-4])
    with pytest.raises(EmbedError, match=r"chunk-000001\.npy: \d+ bytes, expected \d+"):
        open_embeddings(tmp_path)
    npy.unlink()
    with pytest.raises(EmbedError, match=r"chunk-000001\.npy: missing"):
        open_embeddings(tmp_path)
    (tmp_path / "chunk-000002.json").unlink()
    with pytest.raises(EmbedError, match=r"chunk-000001\.npy: missing"):
        open_embeddings(tmp_path)


def test_an_unfinished_job_is_refused(tmp_path) -> None:
    write_job(tmp_path, items=10, chunk_size=4)
    (tmp_path / "chunk-000002.json").unlink()  # the marker is written last: chunk 2 unfinished
    with pytest.raises(EmbedError, match=r"chunk-000002\.json: missing; expected 3 finished"):
        open_embeddings(tmp_path)


def test_a_flipped_byte_passes_fast_verify_but_not_full(tmp_path) -> None:
    manifest, _ = write_job(tmp_path, items=10, chunk_size=4)
    npy = tmp_path / "chunk-000000.npy"
    data = bytearray(npy.read_bytes())
    data[-5] ^= 0xFF  # same size: only the sha256 sees it
    npy.write_bytes(bytes(data))
    assert open_embeddings(tmp_path, verify="fast").count == 10
    assert chunk_done(tmp_path, 0, manifest, "fast")
    assert not chunk_done(tmp_path, 0, manifest, "full")
    with pytest.raises(EmbedError, match=r"chunk-000000\.npy: sha256 differs"):
        open_embeddings(tmp_path, verify="full")


def test_folders_of_another_model_or_sharing_ids_are_refused(tmp_path) -> None:
    write_job(tmp_path / "a", items=6, chunk_size=4)
    write_job(tmp_path / "b", items=6, chunk_size=4, first_id=100, sha="b" * 64)
    with pytest.raises(EmbedError, match=r"disagree on model_sha256.*expected embeddings of one"):
        open_embeddings([tmp_path / "a", tmp_path / "b"])
    write_job(tmp_path / "c", items=6, chunk_size=4, first_id=4)  # ids 4, 5 are in "a" too
    with pytest.raises(EmbedError, match=r"ids repeat across the embedding folders, e.g. \[4, 5\]"):
        open_embeddings([tmp_path / "a", tmp_path / "c"])
    write_job(tmp_path / "d", items=6, chunk_size=4, first_id=6)
    both = open_embeddings([tmp_path / "a", tmp_path / "d"])
    assert both.count == 12 and len(both.info["sources"]) == 2


def test_a_chunk_marker_of_another_model_is_refused(tmp_path) -> None:
    write_job(tmp_path, items=6, chunk_size=4)
    marker = tmp_path / "chunk-000001.json"
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"dim": 16}))
    with pytest.raises(EmbedError, match=r"chunk-000001\.json: dim 16, expected the job's 8"):
        open_embeddings(tmp_path)


def test_a_rerun_of_another_job_into_the_same_folder_is_refused(tmp_path) -> None:
    manifest, _ = write_job(tmp_path, items=6, chunk_size=4)
    prepare_output(tmp_path, manifest | {"created": "later"})  # the same job: fine
    with pytest.raises(EmbedError, match=r"another job's output \(chunk_size, chunks differ"):
        prepare_output(tmp_path, manifest | {"chunk_size": 2, "chunks": 3})


def test_a_folder_without_a_job_is_refused(tmp_path) -> None:
    with pytest.raises(EmbedError, match=r"no embedding\.json; expected the output folder"):
        open_embeddings(tmp_path)
