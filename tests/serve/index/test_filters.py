"""Filters inside the search: every index type against a slow, obvious reference (numpy brute
force over the rows a Python predicate keeps), with live adds and deletes, and bad filters."""

# ruff: noqa: E741
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import coins.serve.index.filtered as filtered
from coins.retrieval.shards import job_manifest, prepare_output, write_chunk
from coins.serve.index.build import build_index
from coins.serve.index.filters import MAX_DEPTH, FilterError, parse_filter
from coins.serve.index.store import SearchIndex
from coins.serve.index.stream import build_from_source

D = 16
N = 1200
BRANDS = [f"b{i}" for i in range(10)]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalogue(n: int = N, first: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Clustered vectors with csv-like text rows: price, brand, in_stock, added (timestamp)."""
    rng = np.random.default_rng(seed)
    centers = unit(np.random.default_rng(99).standard_normal((12, D)))
    xb = unit(centers[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, D)) / np.sqrt(D))
    ids = np.arange(first, first + n, dtype=np.int64)
    rows = [
        {
            "id": int(i),
            "path": f"/g/{i}.jpg",
            "coarse": f"c{i % 3}",
            "fine": f"f{i % 7}",
            "price": f"{rng.uniform(1, 100):.2f}",
            "brand": BRANDS[int(rng.integers(0, len(BRANDS)))],
            "in_stock": "true" if rng.random() < 0.3 else "false",
            "added": f"2024-01-{1 + i % 28:02d}T12:00:00Z",
        }
        for i in ids
    ]
    return ids, xb, rows


def holds(row: dict[str, Any], f: dict[str, Any]) -> bool:
    """The obvious reading of a filter on one typed row."""

    def cond(c: dict[str, Any]) -> bool:
        if "has_id" in c:
            return row["id"] in c["has_id"]
        if "key" not in c:
            return holds(row, c)
        v = row.get(c["key"])
        if v is None:
            return False
        if "match" in c:
            m = c["match"]
            return v == m["value"] if "value" in m else v in m["any"]
        r = c["range"]
        ops = {"gt": v.__gt__, "gte": v.__ge__, "lt": v.__lt__, "lte": v.__le__}
        return all(ops[op](bound) for op, bound in r.items())

    return (
        all(cond(c) for c in f.get("must", []))
        and (not f.get("should") or any(cond(c) for c in f["should"]))
        and not any(cond(c) for c in f.get("must_not", []))
    )


def reference(index: SearchIndex, xq: np.ndarray, k: int, f: dict) -> list[list[int]]:
    """Numpy brute force over the items `holds` keeps."""
    ids, _, _ = index.labels()
    rows = index.metadata(ids)
    keep = np.array([i for i, r in zip(ids, rows, strict=True) if holds(r, f)], dtype=np.int64)
    if keep.size == 0:
        return [[] for _ in xq]
    S = xq @ index.reconstruct(keep).T  # [nq, m]
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return [keep[o].tolist() for o in order]


FILTERS = [
    {"must": [{"key": "brand", "match": {"value": "b3"}}]},  # ~10 %
    {"must": [{"key": "brand", "match": {"any": ["b1", "b2", "b7"]}}]},
    {"must": [{"key": "price", "range": {"gte": 20, "lt": 30.5}}]},
    {
        "must": [{"key": "in_stock", "match": {"value": True}}],
        "must_not": [{"key": "coarse", "match": {"value": "c0"}}],
    },
    {
        "should": [
            {"key": "fine", "match": {"value": "f2"}},
            {
                "must": [
                    {"key": "price", "range": {"lt": 5}},
                    {"key": "brand", "match": {"value": "b0"}},
                ]
            },
        ]
    },
    {"must": [{"key": "added", "range": {"gte": "2024-01-10", "lt": "2024-01-12T00:00:00+00:00"}}]},
    {"must_not": [{"key": "brand", "match": {"any": BRANDS[1:]}}]},  # 10 %, by negation
    {"must": [{"has_id": [3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987]}]},
    {"must": [{"key": "brand", "match": {"value": "nope"}}]},  # nothing
]


def search_ids(index: SearchIndex, xq: np.ndarray, k: int, f: dict) -> list[list[int]]:
    _D, I = index.search(xq, k, filter=f)
    return [[int(i) for i in row if i >= 0] for row in I]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found, truth, strict=True))
    total = sum(len(b) for b in truth)
    return hits / total if total else float(not any(found))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list]:
    return catalogue()


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory, data) -> dict[str, SearchIndex]:
    ids, xb, rows = data
    out = {}
    for name, key in (("flat", "flat"), ("ivf", "IVF16,Flat"), ("hnsw", "HNSW16")):
        path = tmp_path_factory.mktemp(name)
        out[name] = build_index(ids, xb, rows, path, index_key=key, tune_queries=0)
        if name == "ivf":
            out[name].index.nprobe = 4
    out["ivf-on-disk"] = on_disk_index(tmp_path_factory.mktemp("disk"), ids, xb, rows)
    return out


def shard_folder(job: Path, ids: np.ndarray, xb: np.ndarray, rows: list) -> Path:
    """A finished `coins embed` folder of these items (text rows, as from a csv)."""
    job.mkdir()
    manifest = job_manifest(
        model_sha256="ab" * 32, dim=D, which="embedding", preprocess={}, source={"kind": "x"},
        id_scheme="column", items=len(ids), chunk_size=500,
    )  # fmt: skip
    prepare_output(job, manifest)
    for c, s in enumerate(range(0, len(ids), 500)):
        write_chunk(job, c, xb[s : s + 500], rows[s : s + 500], [], "ab" * 32)
    return job


def on_disk_index(folder: Path, ids: np.ndarray, xb: np.ndarray, rows: list) -> SearchIndex:
    """An on-disk IVF built from a `coins embed` folder of the same items."""
    from coins.retrieval.shards import open_embeddings

    emb = open_embeddings([shard_folder(folder / "job", ids, xb, rows)])
    index = build_from_source(
        emb, folder / "index", index_key="IVF16,Flat", on_disk=True, tune_queries=0
    )
    index.index.nprobe = 4
    return index


@pytest.mark.parametrize("strategy", ["exact", "selector"])
@pytest.mark.parametrize("name", ["flat", "ivf", "ivf-on-disk", "hnsw"])
def test_filtered_search_matches_brute_force_over_the_filtered_rows(
    indexes, data, name, strategy, monkeypatch
) -> None:
    index = indexes[name]
    _, xb, _ = data
    if strategy == "selector":  # never exact: the FAISS search with an id selector
        monkeypatch.setattr(filtered, "plan", _selector_plan)
    xq = unit(xb[:20] + 0.05)
    for f in FILTERS:
        if name == "hnsw" and strategy == "selector" and len(index.select(f)) < 0.05 * N:
            continue  # a graph search keeping a few nodes loses its way: `plan` goes exact
        found, truth = search_ids(index, xq, 10, f), reference(index, xq, 10, f)
        for row, want in zip(found, truth, strict=True):
            assert len(row) == len(want)  # k results whenever k items match
            assert all(holds(index.metadata(np.array([i]))[0], f) for i in row)
        exact = strategy == "exact" or name in ("flat", "ivf", "ivf-on-disk")
        assert recall(found, truth) >= (1.0 if exact else 0.9), (name, f)


def _selector_plan(index: Any, allowed: int) -> filtered.Plan:
    ivf = filtered.ivf_of(index)
    if ivf is not None:  # every list: exact for IVF-Flat, so the comparison is exact
        return filtered.Plan("selector", nprobe=int(ivf.nlist))
    if filtered.hnsw_of(index) is not None:
        return filtered.Plan("selector", ef_search=256)
    return filtered.Plan("selector")


def test_plan_goes_exact_when_few_items_are_allowed(indexes) -> None:
    ivf = indexes["ivf"].index
    assert filtered.plan(ivf, 10).strategy == "exact"
    assert filtered.plan(indexes["hnsw"].index, 10).strategy == "exact"


@pytest.mark.parametrize("ids", [np.array([1, 5, 64, 900]), np.array([3, 2**40, 2**62])])
def test_id_selectors_keep_exactly_their_ids(ids) -> None:
    """A bitmap for small ids, a batch for large ones: each is a member test of the set."""
    sel, _keep = filtered.id_selector(np.sort(ids))
    probe = np.unique(np.concatenate([ids, ids + 1, [0, 7, 8, 63, 65, 2**41]]))
    assert [bool(sel.is_member(int(i))) for i in probe] == [int(i) in set(ids) for i in probe]


def test_fields_are_typed_in_the_manifest_and_the_rows(indexes) -> None:
    index = indexes["flat"]
    assert index.manifest.fields == {
        "price": "float",
        "brand": "string",
        "in_stock": "bool",
        "added": "timestamp",
    }
    row = index.metadata(np.array([4]))[0]
    assert isinstance(row["price"], float) and isinstance(row["in_stock"], bool)
    assert row["added"] == "2024-01-05T12:00:00+00:00"
    again = SearchIndex.load(indexes["ivf-on-disk"].index_dir)  # inferred from shard rows too
    assert again.manifest.fields == index.manifest.fields
    assert again.metadata(np.array([4]))[0] == row


def test_a_filter_matching_nothing_returns_no_results(indexes, data) -> None:
    _D, I = indexes["ivf"].search(data[1][:3], 5, filter=FILTERS[-1])
    assert (I == -1).all()


def test_filters_follow_live_adds_and_deletes_and_the_logged_reload(tmp_path, data) -> None:
    ids, xb, rows = data
    build_index(ids[:600], xb[:600], rows[:600], tmp_path / "i", "IVF8,Flat", tune_queries=0)
    index = SearchIndex.load(tmp_path / "i")  # with its write-ahead log
    index.index.nprobe = 2
    new_ids, new_xb, new_rows = catalogue(50, first=10_000, seed=5)
    typed = index.schema.parse_rows(new_rows)  # an admin add sends JSON values
    index.log.add(new_ids, new_xb, typed)
    index.add(new_ids, new_xb, typed)
    gone = np.arange(0, 600, 3, dtype=np.int64)
    index.log.remove(gone)
    index.remove(gone)
    xq = unit(new_xb[:10] + 0.05)
    for f in FILTERS:
        found, truth = search_ids(index, xq, 10, f), reference(index, xq, 10, f)
        assert recall(found, truth) >= 0.95, f
        assert not {i for row in found for i in row} & set(gone.tolist())
    again = SearchIndex.load(tmp_path / "i")  # the write-ahead log replayed
    again.index.nprobe = 2
    for f in FILTERS:
        assert search_ids(again, xq, 10, f) == search_ids(index, xq, 10, f)


def test_coarse_fine_and_ids_are_filters_too(indexes) -> None:
    index = indexes["flat"]
    c1 = index.ids_where(coarse="c1")
    assert np.array_equal(c1, index.select({"must": [{"key": "coarse", "match": {"value": 1}}]}))
    assert np.array_equal(c1, np.arange(1, N, 3))
    by_id = index.select({"must": [{"key": "id", "range": {"gte": 10, "lt": 13}}]})
    assert by_id.tolist() == [10, 11, 12]


@pytest.mark.parametrize(
    ("f", "names"),
    [
        ({"must": [{"key": "colour", "match": {"value": "red"}}]}, "unknown field 'colour'"),
        ({"must": [{"key": "brand", "range": {"gte": 3}}]}, "range on field 'brand'"),
        ({"must": [{"key": "in_stock", "range": {"gte": 1}}]}, "range on field 'in_stock'"),
        ({"must": [{"key": "price", "match": {"value": "cheap"}}]}, "field 'price' (float)"),
        ({"must": [{"key": "in_stock", "match": {"value": 1}}]}, "field 'in_stock' (bool)"),
        ({"must": [{"key": "added", "range": {"gt": "soon"}}]}, "field 'added' (timestamp)"),
        ({"must": [{"key": "coarse", "match": {"value": 9}}]}, "coarse class 9 out of range"),
        ({"must": [{"key": "price", "match": {"value": 1}, "range": {"lt": 2}}]}, "exactly one"),
        ({"must": [{"key": "price", "range": {}}]}, "at least one of gt"),
        ({"must": [{"key": "price", "range": {"lt": 2, "below": 3}}]}, "below"),
        ({"where": []}, "where"),
        ({"must": {"key": "brand"}}, "must"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_filters_raise_a_filter_error_naming_the_problem(indexes, f, names) -> None:
    with pytest.raises(FilterError) as e:
        indexes["flat"].select(f)
    assert names in str(e.value)


def test_filters_nest_up_to_the_documented_depth() -> None:
    f: dict[str, Any] = {"must": [{"key": "brand", "match": {"value": "b1"}}]}
    for _ in range(MAX_DEPTH - 1):
        f = {"must": [f]}
    assert parse_filter(f) is not None
    with pytest.raises(FilterError, match=f"deeper than {MAX_DEPTH}"):
        parse_filter({"must": [f]})
    deep: dict[str, Any] = {}
    for _ in range(10_000):  # hostile nesting: refused before any recursion
        deep = {"should": [deep]}
    with pytest.raises(FilterError, match="deeper"):
        parse_filter(deep)


def test_a_cached_selection_ends_with_the_next_add_or_remove(tmp_path, data) -> None:
    ids, xb, rows = data
    index = build_index(ids[:100], xb[:100], rows[:100], tmp_path / "i", "flat", tune_queries=0)
    f = {"must": [{"key": "brand", "match": {"value": "b3"}}]}
    before = index.select(f)
    assert index.select(f) is before and not before.flags.writeable  # kept, read-only
    new = index.schema.check_rows([{"id": 500, "brand": "b3", "price": 1.0}])
    index.add(np.array([500]), xb[:1], new)
    assert index.select(f).tolist() == [*before.tolist(), 500]
    index.remove(before[:1])
    assert index.select(f).tolist() == [*before[1:].tolist(), 500]


def test_the_cli_declares_fields_prints_them_and_searches_with_a_filter(tmp_path, data) -> None:
    import json

    from typer.testing import CliRunner

    from coins.cli import app

    ids, xb, rows = data
    job = shard_folder(tmp_path / "job", ids[:300], xb[:300], rows[:300])
    out = tmp_path / "index"
    run = CliRunner().invoke
    r = run(app, ["index", "--from-embeddings", str(job), "-o", str(out), "--type", "flat",
                  "--field", "added:string"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "fields: added:string, brand:string, in_stock:bool, price:float" in r.output
    f = {"must": [{"key": "brand", "match": {"any": ["b1", "b2"]}}]}
    r = run(app, ["search", str(out), "--id", "3", "-k", "5", "--filter", json.dumps(f), "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)[0]
    assert len(hits) == 5 and all(h["metadata"]["brand"] in ("b1", "b2") for h in hits)
    bad = json.dumps({"must": [{"key": "colour", "match": {"value": "red"}}]})
    r = run(app, ["search", str(out), "--id", "3", "--filter", bad])
    assert r.exit_code == 2 and "unknown field 'colour'" in r.output


def test_the_pydantic_model_alone_refuses_deep_filters() -> None:
    """As a field of a request model (the API's), without parse_filter's check first."""
    from pydantic import ValidationError

    from coins.serve.index.filters import Filter

    f: dict[str, Any] = {"must": [{"key": "brand", "match": {"value": "b1"}}]}
    for _ in range(MAX_DEPTH):
        f = {"should": [f]}
    with pytest.raises(ValidationError, match=f"deeper than {MAX_DEPTH}"):
        Filter.model_validate(f)


def test_allowed_ids_the_index_does_not_hold_are_ignored(indexes, data) -> None:
    xq = data[1][:2]
    for name in ("flat", "ivf", "hnsw"):
        _D, I = indexes[name].search(xq, 3, allowed_ids=np.array([5, 10**15, 7]))
        assert sorted(I[0].tolist()) == [-1, 5, 7], name
