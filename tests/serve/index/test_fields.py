"""Typed fields: inferred or declared at build, recorded in the manifest, stored and returned
typed, checked on live adds (nothing written when refused) and on appends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coins.serve.index.build import append_to_index, build_index
from coins.serve.index.fields import FieldError, Schema, infer_schema, parse_declared
from coins.serve.index.store import SearchIndex
from coins.serve.index.wal import log_path

D = 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rows(n: int, first: int = 0, **extra: str) -> list[dict]:
    """csv-like rows: every cell text, an empty one missing."""
    out = []
    for i in range(first, first + n):
        row = {"id": i, "path": f"{i}.png", "coarse": "c", "fine": None}
        row |= {"price": f"{i}.5", "qty": str(i), "sale": "TRUE" if i % 2 else "false"}
        row |= {"day": f"2024-02-{1 + i % 9:02d}", "brand": "007", "note": "" if i % 3 else "x"}
        out.append(row | extra)
    return out


def build(path: Path, n: int = 30, fields: dict | None = None) -> SearchIndex:
    xb = unit(np.random.default_rng(0).standard_normal((n, D)))
    return build_index(np.arange(n), xb, rows(n), path, "flat", tune_queries=0, fields=fields)


def test_types_are_inferred_from_text_and_declared_types_win(tmp_path) -> None:
    index = build(tmp_path / "i", fields={"brand": "string"})
    want = {"price": "float", "qty": "int", "sale": "bool", "day": "timestamp"}
    assert index.manifest.fields == want | {"brand": "string", "note": "string"}
    again = SearchIndex.load(tmp_path / "i")
    assert again.schema.fields == index.manifest.fields
    row = again.metadata(np.array([3]))[0]
    assert row["price"] == 3.5 and row["qty"] == 3 and row["sale"] is True
    assert row["day"] == "2024-02-04T00:00:00+00:00" and row["brand"] == "007"
    assert row["note"] == "x" and again.metadata(np.array([4]))[0]["note"] is None  # empty cell
    inferred = build(tmp_path / "j").manifest.fields
    assert inferred["brand"] == "int"  # "007" reads as a number unless declared


@pytest.mark.parametrize("name", ["ID", "Coarse", "split", "path"])
def test_a_field_named_like_a_reserved_column_is_refused(name) -> None:
    with pytest.raises(FieldError, match="reserved column"):
        infer_schema([{"id": 1, name: "x"}] if name != "split" else [{"id": 1}], {name: "string"})


def test_declared_fields_are_name_colon_type() -> None:
    assert parse_declared(["price:float", "a:b:int"]) == {"price": "float", "a:b": "int"}
    for bad, says in (("price", "NAME:TYPE"), ("price:money", "unknown type 'money'")):
        with pytest.raises(FieldError, match=says):
            parse_declared([bad])


def test_values_are_checked_against_their_type() -> None:
    s = Schema({"price": "float", "qty": "int", "sale": "bool", "day": "timestamp"})
    ok = s.check_rows([{"id": 1, "price": 2, "qty": 3, "sale": False, "day": "2024-01-01"}])
    assert ok[0]["price"] == 2.0 and isinstance(ok[0]["price"], float)
    for field, value in (("price", "55.49"), ("qty", 2.5), ("qty", True), ("sale", 1)):
        with pytest.raises(FieldError, match=f"item 1: field '{field}'"):
            s.check_rows([{"id": 1, field: value}])
    with pytest.raises(FieldError, match="timestamp"):
        s.check_rows([{"id": 1, "day": "tomorrow"}])


def test_a_live_add_of_a_wrong_type_is_refused_and_nothing_is_written(tmp_path) -> None:
    build(tmp_path / "i")
    index = SearchIndex.load(tmp_path / "i")
    log = log_path(tmp_path / "i", index.manifest.generation)
    size = log.stat().st_size if log.exists() else 0
    v = unit(np.ones((1, D)))
    bad = [{"id": 99, "coarse": "c", "price": "cheap"}]
    with pytest.raises(FieldError, match="item 99: field 'price'"):
        index.log.add(np.array([99]), v, bad)
    with pytest.raises(FieldError, match="field 'price'"):
        index.add(np.array([99]), v, bad)
    assert (log.stat().st_size if log.exists() else 0) == size
    assert index.metadata(np.array([99])) == [None] and index.ntotal == 30
    good = [{"id": 99, "coarse": "c", "price": 1.25, "colour": "red"}]  # a new field joins
    index.log.add(np.array([99]), v, good)
    index.add(np.array([99]), v, good)
    assert index.manifest.fields["colour"] == "string"
    assert index.select({"must": [{"key": "colour", "match": {"value": "red"}}]}).tolist() == [99]
    again = SearchIndex.load(tmp_path / "i")  # replayed from the log, with the new field
    assert again.manifest.fields["colour"] == "string"
    assert again.select({"must": [{"key": "price", "range": {"gt": 1, "lt": 1.3}}]}).tolist() == [
        99
    ]


def test_append_with_other_fields_is_refused_naming_the_difference(tmp_path) -> None:
    build(tmp_path / "i")
    xb = unit(np.random.default_rng(1).standard_normal((5, D)))
    new = rows(5, first=100)
    for row in new:
        row.pop("note")
        row["colour"] = "red"
    with pytest.raises(
        FieldError, match=r"missing field\(s\) \['note'\]; new field\(s\) \['colour'\]"
    ):
        append_to_index(tmp_path / "i", np.arange(100, 105), xb, new)
    retyped = rows(5, first=100, qty="many")
    with pytest.raises(FieldError, match="field 'qty'"):
        append_to_index(tmp_path / "i", np.arange(100, 105), xb, retyped)
    with pytest.raises(FieldError, match="differ"):
        append_to_index(
            tmp_path / "i", np.arange(100, 105), xb, rows(5, 100), fields={"qty": "float"}
        )
    assert SearchIndex.load(tmp_path / "i").ntotal == 30
    index = append_to_index(tmp_path / "i", np.arange(100, 105), xb, rows(5, first=100))
    assert index.metadata(np.array([101]))[0]["price"] == 101.5
