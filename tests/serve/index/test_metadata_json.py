"""`MetadataStore.get_json` (the search route's metadata, written by SQLite) against the slow
reference: the row `get` reads, as `metadata_dict` shows it. Equal as JSON values, for rows of
every kind of field, through a delta of adds, deletes and replacements too."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from coins.serve.api.search import metadata_dict
from coins.serve.index.delta import MetadataDelta
from coins.serve.index.metadata import MetadataStore

ROWS = [
    {"id": 0, "path": "a/0.jpg", "coarse": "shoes", "fine": "sku-1"},
    {"id": 1, "path": None, "coarse": "3", "fine": None},
    {"id": 7, "path": 'é/ü 東京 "q" \\ back\nline.jpg', "coarse": "bags", "fine": "x"},
    {
        "id": 2**40,
        "coarse": "c",
        "price": 12.5,
        "stock": 3,
        "tags": ["a", "b"],
        "nested": {"x": [1, 2.25e-7, -1e300], "y": {"z": None}},
        "flag": True,
        "off": False,
        "big": 2**70,
        "tiny": 5e-324,
        "text": 'tab\tquote"slash\\ \u2028 emoji \U0001f600',
    },
    {"id": 5, "path": "p", "coarse": None, "fine": None, "brand": ""},
]


def reference(store: MetadataStore | MetadataDelta, ids: np.ndarray) -> list[object]:
    return [
        None if r is None else metadata_dict(int(i), r)
        for i, r in zip(ids, store.get(ids), strict=True)
    ]


def parsed(texts: list[str | None]) -> list[object]:
    return [None if t is None else json.loads(t) for t in texts]


@pytest.fixture
def store(tmp_path) -> MetadataStore:
    s = MetadataStore(tmp_path / "m.sqlite", create=True)
    s.insert(ROWS)
    return s


def test_json_rows_equal_the_dicts_the_api_shows(store) -> None:
    ids = np.array([7, 0, 999, 2**40, 1, 5, 0], dtype=np.int64)  # unknown, repeated, any order
    got = parsed(store.get_json(ids))
    assert got == reference(store, ids)
    assert got[2] is None and got[1]["path"] == "a/0.jpg"
    assert got[3]["extra"]["big"] == 2**70 and got[3]["extra"]["tags"] == ["a", "b"]


def test_more_ids_than_one_query_takes(store) -> None:
    ids = np.concatenate([np.arange(2000, dtype=np.int64), [7, 2**40]])  # two IN (...) chunks
    assert parsed(store.get_json(ids)) == reference(store, ids)


def test_through_a_delta_of_adds_deletes_and_replacements(store) -> None:
    delta = MetadataDelta(store)
    delta.delete(np.array([1, 7], dtype=np.int64))
    delta.insert([{"id": 7, "coarse": "new", "color": "red"}, {"id": 50, "path": "n.jpg"}])
    upper = delta.freeze()  # a delta over a delta, as during a compaction
    upper.delete(np.array([0], dtype=np.int64))
    ids = np.array([0, 1, 7, 50, 5, 2**40, 3], dtype=np.int64)
    for d in (delta, upper):
        assert parsed(d.get_json(ids)) == reference(d, ids)
    got = parsed(upper.get_json(ids))
    assert got[0] is None and got[1] is None and got[2]["extra"] == {"color": "red"}


def test_a_row_sqlite_cannot_read_as_json_is_an_operational_error(tmp_path) -> None:
    # Python's json writes NaN, which is not JSON: the route falls back to `get` (the API
    # test of the fallback is in tests/serve/api/test_search_fast.py)
    s = MetadataStore(tmp_path / "nan.sqlite", create=True)
    s.insert([{"id": 1, "score": math.nan}])
    with pytest.raises(sqlite3.OperationalError):
        s.get_json(np.array([1], dtype=np.int64))
