# ruff: noqa: E741
import json

import numpy as np
import pytest

import coins.serve.index.store as index_module
from coins.serve.index.build import IndexBuildError, build_index
from coins.serve.index.choice import IndexChoiceError, choose_index, nlist_for
from coins.serve.index.manifest import IndexManifest
from coins.serve.index.metadata import MetadataStore
from coins.serve.index.store import (
    IndexLoadError,
    IndexUpdateError,
    SearchIndex,
    UnknownIdError,
    result_rows,
)
from coins.serve.index.tuning import k_recall


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = 16, centers: int = 20, seed: int = 0, sigma: float = 0.3):
    rng = np.random.default_rng(seed)
    c = unit(rng.standard_normal((centers, d)))
    lab = rng.integers(0, centers, n)
    return unit(c[lab] + sigma * rng.standard_normal((n, d)) / np.sqrt(d)), lab


def gallery(n: int = 600, d: int = 16, seed: int = 0):
    xb, lab = clustered(n, d, seed=seed)
    ids = np.arange(n, dtype=np.int64) * 3 + 1000  # not positions: ids must survive
    rows = [{"id": int(i), "path": f"img/{i}.png", "coarse": f"c{l % 4}", "fine": f"f{l}",
             "shop": "a"} for i, l in zip(ids, lab, strict=True)]  # fmt: skip
    return ids, xb, rows


def brute_force(xq, xb, ids, k):
    S = unit(xq) @ xb.T  # [nq, nb]
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, order, axis=1), ids[order]


@pytest.fixture
def flat(tmp_path):
    ids, xb, rows = gallery()
    build_index(ids, xb, rows, tmp_path / "idx", index_key="flat", tune_queries=50)
    return tmp_path / "idx", ids, xb, rows


def test_flat_search_equals_brute_force_and_keeps_ids(flat) -> None:
    path, ids, xb, _ = flat
    index = SearchIndex.load(path)
    assert index.ntotal == len(ids) and index.dim == 16
    assert index.manifest.index_key == "IDMap2,Flat" and index.manifest.tuning.recall == 1.0
    xq = clustered(20, seed=5)[0]
    D, I = index.search(xq, 7)
    D_ref, I_ref = brute_force(xq, xb, ids, 7)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, atol=1e-5)
    np.testing.assert_array_equal(index.reconstruct(ids[[3, 0]]), xb[[3, 0]])


def test_metadata_and_filters(flat) -> None:
    path, ids, _, rows = flat
    index = SearchIndex.load(path)
    got = index.metadata(np.array([ids[2], 7], dtype=np.int64))
    assert got[0] == rows[2] and got[1] is None
    c1 = index.ids_where(coarse="c1")
    assert np.array_equal(c1, [r["id"] for r in rows if r["coarse"] == "c1"])
    assert np.array_equal(index.ids_where(coarse=1), c1)  # number = position in sorted names
    assert index.ids_where(coarse="c1", fine="nope").size == 0


@pytest.mark.parametrize("key", ["flat", "IVF16,Flat", "hnsw"])
def test_allowed_ids_search_equals_brute_force_on_the_subset(tmp_path, key) -> None:
    ids, xb, rows = gallery()
    index = build_index(ids, xb, rows, tmp_path / "i", index_key=key, target_recall=1.0)
    allowed = ids[::5]
    xq = clustered(10, seed=9)[0]
    _, I = index.search(xq, 5, allowed_ids=allowed)
    _, I_ref = brute_force(xq, xb[::5], allowed, 5)
    assert np.isin(I, allowed).all()  # and no -1: scaled nprobe / efSearch find k of them
    assert k_recall(I, I_ref) >= (1.0 if key == "flat" else 0.9)


def test_tuning_reaches_the_target_recall(tmp_path) -> None:
    ids, xb, rows = gallery(n=3200, d=32)
    xq, ids, xb, rows = xb[3000:], ids[:3000], xb[:3000], rows[:3000]  # 200 held out
    for key in ("ivf", "hnsw"):
        index = build_index(ids, xb, rows, tmp_path / key, index_key=key, target_recall=0.95)
        t = index.manifest.tuning
        assert t.reached and t.recall >= 0.95 and t.p99_ms >= t.p50_ms > 0
        assert set(index.manifest.index_params) == {"nprobe" if key == "ivf" else "efSearch"}
        # measured again, independently, with queries not in the index
        _, I = SearchIndex.load(tmp_path / key).search(xq, 10)
        assert k_recall(I, brute_force(xq, xb, ids, 10)[1]) >= 0.9


def test_append_adds_items_and_rejects_taken_ids(flat) -> None:
    path, ids, xb, rows = flat
    index = SearchIndex.load(path)
    new_ids, new_xb, new_rows = gallery(n=10, seed=3)
    new_ids = new_ids + 10**9
    new_rows = [r | {"id": int(i), "coarse": "new"} for r, i in zip(new_rows, new_ids, strict=True)]
    index.add(new_ids, new_xb, new_rows)
    index.save()
    again = SearchIndex.load(path)
    assert again.ntotal == len(ids) + 10 and again.manifest.generation == 2
    _, I = again.search(new_xb[:1], 1)
    assert I[0, 0] == new_ids[0]
    assert np.array_equal(again.ids_where(coarse="new"), new_ids)
    assert again.manifest.classes["coarse"][-1] == "new"
    with pytest.raises(IndexUpdateError, match="already in the index"):
        again.add(ids[:1], xb[:1], rows[:1])
    assert sorted(p.name for p in path.iterdir()) == [
        "index-000002.faiss", "index.json", "metadata-000002.sqlite"]  # fmt: skip


def test_remove_from_flat_and_ivf_but_not_hnsw(tmp_path) -> None:
    ids, xb, rows = gallery()
    for key in ("flat", "ivf"):
        index = build_index(ids, xb, rows, tmp_path / key, index_key=key)
        assert index.remove(ids[:5]) == 5
        index.save()
        again = SearchIndex.load(tmp_path / key)
        assert again.ntotal == len(ids) - 5 and again.metadata(ids[:5]) == [None] * 5
        _, I = again.search(xb[:5], 3)
        assert not np.isin(I, ids[:5]).any()
        with pytest.raises(UnknownIdError):
            again.remove(ids[:1])
    hnsw = build_index(ids, xb, rows, tmp_path / "hnsw", index_key="hnsw")
    with pytest.raises(IndexUpdateError, match="cannot remove"):
        hnsw.remove(ids[:1])


def test_crash_during_save_leaves_the_old_index_loadable(flat, monkeypatch) -> None:
    path, ids, _, _ = flat
    before = json.loads((path / "index.json").read_text())
    index = SearchIndex.load(path)
    index.remove(ids[:10])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(IndexManifest, "save", crash)  # after the new files, before the commit
    with pytest.raises(OSError, match="disk full"):
        index.save()
    monkeypatch.undo()
    monkeypatch.setattr(index_module.faiss, "write_index", crash)  # during the FAISS write
    with pytest.raises(OSError, match="disk full"):
        index.save()
    monkeypatch.undo()
    old = SearchIndex.load(path)
    assert old.ntotal == len(ids) and json.loads((path / "index.json").read_text()) == before
    index.save()  # and a later save commits, and clears the leftovers
    assert SearchIndex.load(path).ntotal == len(ids) - 10
    assert len(list(path.iterdir())) == 3


def test_not_a_faiss_file_and_truncated_file_are_clear_errors(flat) -> None:
    path, *_ = flat
    manifest = IndexManifest.load(path)
    faiss_file = path / manifest.files["index"].name
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexLoadError, match="truncated or replaced"):
        SearchIndex.load(path)
    for content in (b"not an index" * 10, data[: len(data) // 2]):
        faiss_file.write_bytes(content)
        _rehash(path)  # a manifest that agrees with the bad file: FAISS itself must refuse
        with pytest.raises(IndexLoadError, match="not a readable FAISS index"):
            SearchIndex.load(path)


def test_checksum_mismatch_is_a_clear_error(flat) -> None:
    path, *_ = flat
    faiss_file = path / IndexManifest.load(path).files["index"].name
    data = bytearray(faiss_file.read_bytes())
    data[-5] ^= 0xFF
    faiss_file.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="checksum mismatch"):
        SearchIndex.load(path)


def test_metadata_disagreeing_with_the_index_is_a_clear_error(flat) -> None:
    path, ids, _, _ = flat
    db = path / IndexManifest.load(path).files["metadata"].name
    store = MetadataStore(db)
    store.delete(ids[:1])
    store.close()
    _rehash(path)
    with pytest.raises(IndexLoadError, match=f"{len(ids) - 1} metadata rows but the FAISS"):
        SearchIndex.load(path)


def test_model_hash_and_dimension_checks(flat) -> None:
    path, *_ = flat
    with pytest.raises(IndexLoadError, match="not the given model's"):
        SearchIndex.load(path, model_sha256="0" * 64)
    with pytest.raises(ValueError, match=r"queries must be \[n, 16\]"):
        SearchIndex.load(path).search(np.ones((1, 8), np.float32), 3)


def test_bad_build_inputs(tmp_path) -> None:
    ids, xb, rows = gallery(n=50)
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(ids, 2 * xb, rows, tmp_path / "a", index_key="flat")
    with pytest.raises(IndexUpdateError, match="unique"):
        build_index(np.zeros(50, np.int64), xb, rows, tmp_path / "b", index_key="flat")
    with pytest.raises(ValueError, match="not a FAISS factory string"):
        build_index(ids, xb, rows, tmp_path / "c", index_key="Bogus42")
    with pytest.raises(IndexBuildError, match="cannot train"):
        build_index(ids, xb, rows, tmp_path / "d", index_key="IVF64,PQ4x8")
    build_index(ids, xb, rows, tmp_path / "e", index_key="flat")
    with pytest.raises(IndexUpdateError, match="already holds an index"):
        build_index(ids, xb, rows, tmp_path / "e", index_key="flat")


def test_auto_choice_follows_size_and_memory() -> None:
    assert choose_index("auto", 1000, 128).key == "IDMap2,Flat"
    assert choose_index("auto", 10**6, 128, max_memory=2**30).key == "IVF4096,Flat"
    assert choose_index("auto", 10**6, 128, max_memory=2**26).key == "OPQ32_128,IVF4096,PQ32x8"
    assert choose_index("auto", 10**8, 128, max_memory=2**31).key == "OPQ8_128,IVF32768,PQ8x8"
    with pytest.raises(IndexChoiceError):
        choose_index("auto", 10**9, 128, max_memory=2**30)
    assert nlist_for(500) == 8  # at least 39 training points per list


def test_result_rows_drop_the_query_and_the_padding() -> None:
    I = np.array([[5, 1, 2], [3, -1, -1]])
    D = np.array([[0.9, 0.8, 0.7], [0.5, 0.0, 0.0]], dtype=np.float32)
    rows = result_rows(D, I, 2, exclude=np.array([1, 9]))
    assert [ids.tolist() for ids, _ in rows] == [[5, 2], [3]]
    assert rows[0][1].tolist() == pytest.approx([0.9, 0.7])


def _rehash(path) -> None:
    """Make the manifest agree with the files as they are (a crafted, consistent directory)."""
    manifest = IndexManifest.load(path)
    for role, record in manifest.files.items():
        manifest.files[role] = type(record).of(path / record.name)
    manifest.save(path)


def test_a_metadata_file_that_is_not_sqlite_is_a_clear_error(flat) -> None:
    path, *_ = flat
    (path / IndexManifest.load(path).files["metadata"].name).write_bytes(b"x" * 4096)
    _rehash(path)
    with pytest.raises(IndexLoadError, match="not an index metadata database"):
        SearchIndex.load(path)


def test_ground_truth_equals_brute_force_on_the_kept_rows() -> None:
    from coins.serve.index import tuning

    ids, xb, _ = gallery(n=100)
    xq = clustered(5, seed=4)[0]
    keep = np.arange(100) % 3 != 0
    _, I_ref = brute_force(xq, xb[keep], ids[keep], 6)
    assert np.array_equal(tuning.ground_truth(xq, xb, ids, 6, keep=keep), I_ref)
