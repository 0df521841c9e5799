"""Integrity at load: sizes and a fast checksum by default, every byte with verify="full"."""

from __future__ import annotations

import numpy as np
import pytest

from coins.serve.index.build import build_index
from coins.serve.index.manifest import IndexManifest
from coins.serve.index.store import IndexLoadError, SearchIndex


@pytest.fixture
def big(tmp_path):
    """A flat index whose FAISS file is ~5 MiB: more than the two MiB the fast check reads."""
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((20_000, 64)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(len(xb), dtype=np.int64)
    build_index(ids, xb, [{"id": int(i)} for i in ids], tmp_path / "i", "flat", tune_queries=20)
    path = tmp_path / "i"
    return path, path / IndexManifest.load(path).files["index"].name


def flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_middle_passes_fast_but_fails_full(big) -> None:
    path, faiss_file = big
    assert faiss_file.stat().st_size > 4 * 2**20
    flip(faiss_file, faiss_file.stat().st_size // 2)
    assert SearchIndex.load(path).ntotal == 20_000  # the documented limit of the fast check
    with pytest.raises(IndexLoadError, match="checksum mismatch, sha256"):
        SearchIndex.load(path, verify="full")


def test_a_flipped_byte_near_an_end_fails_fast(big) -> None:
    path, faiss_file = big
    flip(faiss_file, 100)
    with pytest.raises(IndexLoadError, match=r"checksum mismatch, fast sha256"):
        SearchIndex.load(path)


def test_a_truncated_file_fails_fast(big) -> None:
    path, faiss_file = big
    faiss_file.write_bytes(faiss_file.read_bytes()[:-1])
    with pytest.raises(IndexLoadError, match="truncated or replaced"):
        SearchIndex.load(path)


def test_a_manifest_without_fast_checksums_is_hashed_in_full(big) -> None:
    path, faiss_file = big
    raw = IndexManifest.load(path).to_dict()
    for record in raw["files"].values():
        del record["fast_sha256"]  # as written before fast checksums existed
    IndexManifest.from_dict(raw).save(path)
    flip(faiss_file, faiss_file.stat().st_size // 2)
    with pytest.raises(IndexLoadError, match="checksum mismatch, sha256"):
        SearchIndex.load(path)


def test_an_unknown_verify_mode_is_refused(big) -> None:
    with pytest.raises(ValueError, match="verify must be one of"):
        SearchIndex.load(big[0], verify="quick")  # type: ignore[arg-type]
