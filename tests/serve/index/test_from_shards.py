"""An index built from `coins embed` folders chunk by chunk, on-disk lists and mmap loading."""

# ruff: noqa: E741
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import coins.serve.index.stream as stream
from coins.cli import app
from coins.retrieval.shards import job_manifest, prepare_output, write_chunk
from coins.serve.index.build import build_gallery_index, build_index
from coins.serve.index.choice import choose_index
from coins.serve.index.manifest import FileRecord, IndexLoadError, IndexManifest
from coins.serve.index.store import IndexUpdateError, SearchIndex, UnknownIdError
from coins.serve.index.tuning import ground_truth, k_recall

D = 16
MODEL = "ab" * 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, centers: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = unit(np.random.default_rng(0).standard_normal((centers, D)))
    lab = rng.integers(0, centers, n)
    return unit(c[lab] + 0.3 * rng.standard_normal((n, D)) / np.sqrt(D)), lab


def write_job(out: Path, n: int, first_id: int, chunk_size: int, seed: int = 0) -> dict:
    """A finished `coins embed` folder of n clustered vectors, ids first_id..., rows with
    labels and an extra column; returns ids, vectors and rows."""
    out.mkdir(parents=True)
    xb, lab = clustered(n, seed)
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    rows = [{"id": int(i), "path": f"/g/{i}.jpg", "coarse": f"c{l % 3}", "fine": f"f{l}",
             "shop": "a"} for i, l in zip(ids, lab, strict=True)]  # fmt: skip
    manifest = job_manifest(
        model_sha256=MODEL, dim=D, which="embedding", preprocess={"input_size": 32},
        source={"kind": "folder", "root": str(out)}, id_scheme="path-hash-v1", items=n,
        chunk_size=chunk_size,
    )  # fmt: skip
    prepare_output(out, manifest)
    for c, s in enumerate(range(0, n, chunk_size)):
        part = slice(s, s + chunk_size)
        write_chunk(out, c, xb[part], rows[part], [], MODEL)
    return {"ids": ids, "xb": xb, "rows": rows}


@pytest.fixture
def two_jobs(tmp_path: Path) -> tuple[list[Path], np.ndarray, np.ndarray, list[dict]]:
    a = write_job(tmp_path / "a", 1500, 10**12, 400, seed=1)
    b = write_job(tmp_path / "b", 900, 5, 250, seed=2)
    ids = np.concatenate([a["ids"], b["ids"]])
    xb = np.concatenate([a["xb"], b["xb"]])
    return [tmp_path / "a", tmp_path / "b"], ids, xb, a["rows"] + b["rows"]


def build(folders: list[Path], out: Path, **kw) -> SearchIndex:
    return build_gallery_index(out, from_embeddings=folders, progress=False, **kw)[0]


def test_exact_build_from_shards_holds_every_item_vector_and_row(two_jobs, tmp_path) -> None:
    folders, ids, xb, rows = two_jobs
    index = build(folders, tmp_path / "idx", index_key="flat")
    again = SearchIndex.load(tmp_path / "idx")
    assert again.ntotal == len(ids)
    np.testing.assert_array_equal(again.reconstruct(ids), xb)
    assert again.metadata(ids[[0, -1]]) == [rows[0], rows[-1]]
    assert again.manifest.id_scheme == "path-hash-v1"
    assert again.manifest.model_sha256 == MODEL
    assert again.manifest.classes["coarse"] == ["c0", "c1", "c2"]
    assert index.manifest.tuning.recall == 1.0
    _, I = again.search(xb[:50], 1)
    np.testing.assert_array_equal(I[:, 0], ids[:50])


def test_ivf_from_shards_matches_an_in_memory_build(two_jobs, tmp_path) -> None:
    folders, ids, xb, rows = two_jobs
    streamed = build(folders, tmp_path / "s", index_key="IVF16,Flat", target_recall=0.9)
    memory = build_index(ids, xb, rows, tmp_path / "m", index_key="IVF16,Flat", target_recall=0.9)
    xq = clustered(200, seed=9)[0]
    gt = ground_truth(xq, xb, ids, 10)
    for index in (streamed, memory):
        assert k_recall(index.search(xq, 10)[1], gt) >= 0.85
    assert streamed.manifest.tuning.reached and streamed.ntotal == len(ids)


def test_running_top_k_over_blocks_equals_exact_ground_truth() -> None:
    xb, _ = clustered(3000, seed=3)
    xq = clustered(40, seed=4)[0]
    ids = np.arange(3000, dtype=np.int64) * 7
    keep = np.random.default_rng(0).random(3000) > 0.1
    top = stream._TopK(xq, 10)
    for s in range(0, 3000, 700):  # uneven blocks
        top.update(xb[s : s + 700], ids[s : s + 700], keep[s : s + 700])
    # sets per query: blocks sum in another order, so near-ties may swap places within a row
    exact = ground_truth(xq, xb, ids, 10, keep=keep)
    np.testing.assert_array_equal(np.sort(top.ids, axis=1), np.sort(exact, axis=1))


def test_on_disk_lists_build_load_search_and_refuse_changes(two_jobs, tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "BLOCK_VECTORS", 500)  # several block indexes to merge
    folders, ids, xb, _ = two_jobs
    out = tmp_path / "disk"
    build(folders, out, index_key="IVF16,Flat", on_disk=True, target_recall=0.9)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["idmap-000001.npy", "index-000001.faiss", "index.json",
                     "lists-000001.ivfdata", "metadata-000001.sqlite"]  # fmt: skip
    index = SearchIndex.load(out)
    files = {"index", "lists", "idmap", "metadata"}
    assert index.ntotal == len(ids) and set(index.manifest.files) == files
    np.testing.assert_array_equal(index.reconstruct(ids[::97]), xb[::97])
    xq = clustered(200, seed=9)[0]
    assert k_recall(index.search(xq, 10)[1], ground_truth(xq, xb, ids, 10)) >= 0.85
    with pytest.raises(IndexUpdateError, match=r"read-only.*on disk"):
        index.add(np.array([1]), xb[:1], [{"id": 1}])
    with pytest.raises(IndexUpdateError, match="read-only"):
        index.remove(ids[:1])
    moved = tmp_path / "moved"  # the lists are found beside the index file, wherever it is
    out.rename(moved)
    for again in (SearchIndex.load(moved), SearchIndex.load(moved, mmap=True)):
        np.testing.assert_array_equal(again.search(xq[:3], 5)[1], index.search(xq[:3], 5)[1])


# OPQ and PQ train for 6-10 s here: slow (over 5 s), so they run in `make test-slow`
PQ_SLOW = pytest.mark.slow


@pytest.mark.parametrize("key", ["IVF16,Flat", pytest.param("OPQ4,IVF16,PQ4x8", marks=PQ_SLOW)])
def test_on_disk_id_map_finds_what_faiss_own_direct_map_finds(two_jobs, tmp_path, key) -> None:
    import faiss

    folders, ids, _, _ = two_jobs
    index = build(folders, tmp_path / "d", index_key=key, on_disk=True, target_recall=0.5)
    ivf = faiss.extract_index_ivf(index.index)
    assert ivf.direct_map.type == faiss.DirectMap.NoMap  # no per-process hash table
    some = ids[::37]
    ours = SearchIndex.load(tmp_path / "d").reconstruct(some)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # the reference: FAISS's own lookup
    # OPQ: the rotation undone in one batch or row by row, equal up to float rounding
    np.testing.assert_allclose(ours, index.index.reconstruct_batch(some), rtol=0, atol=1e-6)
    with pytest.raises(UnknownIdError):
        index.reconstruct(np.array([ids.max() + 1]))


def test_a_truncated_id_map_is_a_clear_load_error(two_jobs, tmp_path) -> None:
    out = tmp_path / "d"
    build(two_jobs[0], out, index_key="IVF16,Flat", on_disk=True, target_recall=0.5)
    (path,) = out.glob("idmap-*.npy")
    np.save(path, np.load(path)[:-1])  # one row short, same name: its checksum fails first
    with pytest.raises(IndexLoadError, match="idmap"):
        SearchIndex.load(out)
    manifest = IndexManifest.load(out)
    manifest.files["idmap"] = FileRecord.of(path)  # a manifest that agrees with the short file
    manifest.save(out)
    with pytest.raises(IndexLoadError, match=r"id map int64 \(2399, 2\), expected int64 \(2400"):
        SearchIndex.load(out)


def test_on_disk_needs_an_ivf(two_jobs, tmp_path) -> None:
    with pytest.raises(ValueError, match="on-disk inverted lists need an IVF"):
        build(two_jobs[0], tmp_path / "x", index_key="flat", on_disk=True)


@pytest.mark.parametrize(
    "key", ["flat", "IVF16,Flat", pytest.param("IVF16,PQ4x8", marks=PQ_SLOW), "hnsw"]
)
def test_mmap_load_searches_as_a_normal_load_and_is_read_only(two_jobs, tmp_path, key) -> None:
    folders, ids, xb, _ = two_jobs
    build(folders, tmp_path / "i", index_key=key, target_recall=0.8)
    normal = SearchIndex.load(tmp_path / "i")
    mapped = SearchIndex.load(tmp_path / "i", mmap=True)
    xq = clustered(50, seed=11)[0]
    for a, b in zip(normal.search(xq, 10), mapped.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    allowed = ids[::3]
    np.testing.assert_array_equal(
        normal.search(xq, 5, allowed_ids=allowed)[1], mapped.search(xq, 5, allowed_ids=allowed)[1]
    )
    with pytest.raises(IndexUpdateError, match="memory-mapped"):
        mapped.add(np.array([3]), xb[:1], [{"id": 3}])


def test_append_shards_to_an_index_built_from_shards(tmp_path) -> None:
    a = write_job(tmp_path / "a", 600, 0, 256, seed=1)
    b = write_job(tmp_path / "b", 300, 10**9, 256, seed=2)
    build([tmp_path / "a"], tmp_path / "idx", index_key="flat")
    build_gallery_index(tmp_path / "idx", from_embeddings=[tmp_path / "b"], append=True)
    index = SearchIndex.load(tmp_path / "idx")
    assert index.ntotal == 900
    _, I = index.search(np.concatenate([a["xb"][:5], b["xb"][:5]]), 1)
    assert I[:, 0].tolist() == a["ids"][:5].tolist() + b["ids"][:5].tolist()
    assert str(tmp_path / "b") in index.manifest.roots


def test_auto_puts_opq_in_front_of_small_pq_codes_only() -> None:
    small = choose_index("auto", 10**7, 128, max_memory=2**29)  # ~45 bytes a vector
    assert small.key == "OPQ32_128,IVF16384,PQ32x8" and "OPQ" in small.reason
    large = choose_index("auto", 10**7, 128, max_memory=2**30)  # ~99 bytes a vector
    assert large.key == "IVF16384,PQ64x8"
    assert choose_index("auto", 5000, 128, on_disk=True).key.startswith("IVF")


def test_cli_builds_on_disk_from_shards(two_jobs, tmp_path) -> None:
    folders = two_jobs[0]
    shards = ["--from-embeddings", str(folders[0]), "--from-embeddings", str(folders[1])]
    options = ["--type", "IVF16,Flat", "--on-disk", "--verify", "full"]
    args = ["index", *shards, *options, "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2,400 vectors" in result.output
    assert SearchIndex.load(tmp_path / "o", verify="full").read_only is not None
    bad = CliRunner().invoke(app, [*args[:-2], "--verify", "quick", "-o", str(tmp_path / "p")])
    assert bad.exit_code != 0 and "fast or full" in bad.output


def test_the_server_loads_with_mmap_and_full_verify_from_its_settings(two_jobs, tmp_path) -> None:
    from coins.serve.api.loading import OnnxArtifacts
    from coins.serve.api.settings import ServeSettings

    build(two_jobs[0], tmp_path / "i", index_key="IVF16,Flat")
    settings = ServeSettings(index_dir=tmp_path / "i", model=tmp_path / "m.onnx", mmap=True)
    index = OnnxArtifacts().load_index(settings, MODEL)
    assert isinstance(index, SearchIndex) and "memory-mapped" in (index.read_only or "")
    assert index.gpu_index is None  # no GPU here: gpu="auto" stays on the CPU
    faiss_file = tmp_path / "i" / index.manifest.files["index"].name
    data = bytearray(faiss_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    full = settings.model_copy(update={"verify": "full"})
    with pytest.raises(ValueError, match="checksum mismatch"):
        OnnxArtifacts().load_index(full, MODEL)


@pytest.mark.parametrize("key", ["IVF256,Flat", "IVF1024,Flat"])
def test_cli_builds_on_disk_at_the_list_counts_that_crashed(tmp_path, key) -> None:
    """2,400 vectors at 256 and 1,024 lists: the on-disk merge once handed FAISS its list sizes
    through a freed temporary, and these builds died in the id map (issue 26)."""
    a = write_job(tmp_path / "a", 2400, 1, 600, seed=3)
    out = tmp_path / "o"
    args = ["index", "--from-embeddings", str(tmp_path / "a"), "--type", key, "--on-disk"]
    result = CliRunner().invoke(app, [*args, "--verify", "full", "-o", str(out)])
    assert result.exit_code == 0, result.output
    index = SearchIndex.load(out, verify="full")
    assert index.ntotal == 2400
    np.testing.assert_array_equal(index.reconstruct(a["ids"][::37]), a["xb"][::37])


def test_a_failed_on_disk_build_leaves_no_half_written_generation(two_jobs, tmp_path, monkeypatch):
    from coins.serve.index.merge import MergeError

    folders, ids, _, _ = two_jobs
    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    build(folders, kept, index_key="IVF16,Flat", on_disk=True, target_recall=0.9)
    before = sorted(p.name for p in kept.iterdir())

    def broken(*args, **kwargs):
        Path(args[3]).write_bytes(b"half")  # the lists file exists, as in a real failure
        raise MergeError("lists do not hold what the blocks held")

    monkeypatch.setattr(stream, "merge_blocks", broken)
    for out, overwrite in ((fresh, False), (kept, True)):
        with pytest.raises(MergeError):
            build(folders, out, index_key="IVF16,Flat", on_disk=True, overwrite=overwrite)
    assert not fresh.exists()  # made by the build, gone with it
    assert sorted(p.name for p in kept.iterdir()) == before  # the old index, untouched
    assert SearchIndex.load(kept, verify="full").ntotal == len(ids)
