"""Filters through the API on a real index with typed fields: the one filter format in
POST /v1/search (by vectors, by ids) and /v1/search/image, 422 naming what is wrong (never a
5xx), an empty answer for a filter keeping nothing, typed values in results, the field schema in
/v1/index, random items to browse, and what the coarse gate did."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import COARSE, FakeEmbedder, colour_image, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.loading import OnnxArtifacts
from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index
from coins.serve.index.filters import MAX_DEPTH

N = 60


class FakeModelRealIndex(OnnxArtifacts):
    def load_model(self, settings: ServeSettings) -> Any:
        return FakeEmbedder()


def shop_rows() -> list[dict[str, Any]]:
    """Item i: brand b(i % 5), price i + 0.5, in stock when i is even, added on day i % 28."""
    return [
        {
            "id": i,
            "coarse": COARSE[i % 3],
            "fine": str(i % 6),
            "brand": f"b{i % 5}",
            "price": f"{i}.5",
            "in_stock": "true" if i % 2 == 0 else "false",
            "added": f"2024-05-{1 + i % 28:02d}",
        }
        for i in range(N)
    ]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    embedder = FakeEmbedder()
    images = [colour_image(i) for i in range(N)]
    xb = embedder.embed_images(images).vectors
    out = tmp_path_factory.mktemp("shop") / "index"
    build_index(np.arange(N), xb, shop_rows(), out, "flat", model_sha256=embedder.sha256,
                tune_queries=0)  # fmt: skip
    return out


@pytest.fixture
def client(index_dir: Path):
    settings = ServeSettings(index_dir=index_dir, model=index_dir / "m.onnx", workers=2, threads=1)
    with TestClient(create_app(settings, FakeModelRealIndex())) as c:
        wait_readyz(c, 30)
        yield c


def search(client: TestClient, filter: Any, **body: Any) -> Any:
    return client.post("/v1/search", json={"ids": [0], "k": N, "filter": filter, **body})


def neighbors(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return list(response.json()["results"][0]["neighbors"])


def expected(keep: Any, exclude: int | None = 0) -> set[int]:
    return {r["id"] for r in build_rows() if keep(r) and r["id"] != exclude}


def build_rows() -> list[dict[str, Any]]:
    """The rows as stored: typed."""
    return [
        {**r, "price": float(r["price"]), "in_stock": r["in_stock"] == "true"} for r in shop_rows()
    ]


def cond(key: str, **test: Any) -> dict[str, Any]:
    return {"key": key, **test}


def test_filters_keep_exactly_the_matching_items_and_values_come_back_typed(client) -> None:
    f = {
        "must": [cond("price", range={"gte": 10, "lt": 40})],
        "should": [cond("brand", match={"value": "b1"}), cond("brand", match={"value": "b2"})],
        "must_not": [cond("in_stock", match={"value": False})],
    }
    found = neighbors(search(client, f))
    want = expected(
        lambda r: 10 <= r["price"] < 40 and r["brand"] in ("b1", "b2") and r["in_stock"]
    )
    assert {n["id"] for n in found} == want and want
    extra = found[0]["metadata"]["extra"]
    assert isinstance(extra["price"], float) and isinstance(extra["in_stock"], bool)
    assert extra["added"].startswith("2024-05-") and extra["added"].endswith("+00:00")
    # by vectors, nested, with ids and a timestamp range
    nested = {
        "must": [
            {"should": [{"has_id": [3, 4, 5, 50]}, cond("coarse", match={"any": ["bags"]})]},
            cond("added", range={"lt": "2024-05-10"}),
        ]
    }
    body = {"vectors": [[1.0] * FakeEmbedder.dim], "k": N, "filter": nested}
    found = neighbors(client.post("/v1/search", json=body))
    want = expected(
        lambda r: (r["id"] in (3, 4, 5, 50) or r["coarse"] == "bags") and r["added"] < "2024-05-10",
        exclude=None,
    )
    assert {n["id"] for n in found} == want and want


def test_a_filter_matching_nothing_gives_empty_results(client) -> None:
    assert neighbors(search(client, {"must": [cond("brand", match={"value": "zed"})]})) == []
    assert neighbors(search(client, {"must": [{"has_id": []}]})) == []


def deep(levels: int) -> dict[str, Any]:
    f: dict[str, Any] = {"must": [cond("brand", match={"value": "b1"})]}
    for _ in range(levels - 1):
        f = {"must": [f]}
    return f


@pytest.mark.parametrize(
    ("filter", "words"),
    [
        ({"must": [cond("colour", match={"value": 1})]}, "unknown field 'colour'"),
        ({"must": [cond("price", match={"value": "cheap"})]}, "field 'price' (float)"),
        ({"must": [cond("in_stock", match={"value": 1})]}, "field 'in_stock' (bool)"),
        ({"must": [cond("brand", range={"gt": "b1"})]}, "range on field 'brand' of type string"),
        ({"must": [cond("price", range={})]}, "at least one of gt, gte, lt, lte"),
        ({"must": [cond("price")]}, "exactly one of match, range"),
        ({"must": [{"has_id": [1], "key": "x"}]}, "Extra inputs"),
        ({"must": "brand"}, "must: Input should be a valid array"),
        ({"brand": ["b1"]}, "brand: Extra inputs"),
        (deep(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
        ({"must": [cond("coarse", match={"value": 7})]}, "coarse class 7 out of range"),
        ({"must": [cond("id", match={"value": 2**70})]}, "outside the 64-bit integers"),
        ({"must": [cond("price", match={"value": 10**400})]}, "price"),
        ({"must": [cond("price", range={"lt": 10**400})]}, "price"),
    ],
)
def test_a_bad_filter_answers_422_naming_it(client, filter, words) -> None:
    for by in ({"ids": [0]}, {"vectors": [[1.0] * FakeEmbedder.dim]}):
        r = client.post("/v1/search", json={**by, "filter": filter})
        assert r.status_code == 422, r.text
        assert words in r.json()["message"], r.json()["message"]
    png = io.BytesIO()
    colour_image(1).save(png, format="PNG")
    files = [("images", ("q.png", png.getvalue(), "image/png"))]
    r = client.post("/v1/search/image", files=files, data={"filter": json.dumps(filter)})
    assert r.status_code == 422 and words in r.json()["message"], r.text


def test_a_filter_nested_to_the_documented_depth_is_taken(client) -> None:
    assert {n["id"] for n in neighbors(search(client, deep(MAX_DEPTH)))} == expected(
        lambda r: r["brand"] == "b1"
    )


def test_image_search_takes_the_filter(client) -> None:
    png = io.BytesIO()
    colour_image(7).save(png, format="PNG")
    files = [("images", ("q.png", png.getvalue(), "image/png"))]
    f = {"must": [cond("brand", match={"any": ["b2", "b3"]})]}
    data = {"k": str(N), "filter": json.dumps(f), "gate": "coarse", "gate_min_prob": "0"}
    result = client.post("/v1/search/image", files=files, data=data).json()["results"][0]
    (gated,) = result["gated_to"]
    assert result["neighbors"]
    for n in result["neighbors"]:
        assert n["metadata"]["extra"]["brand"] in ("b2", "b3")
        assert n["metadata"]["coarse"] == gated


def test_index_shows_the_field_schema_and_classes(client) -> None:
    info = client.get("/v1/index").json()
    assert info["fields"] == {
        "brand": "string",
        "price": "float",
        "in_stock": "bool",
        "added": "timestamp",
    }
    assert sorted(info["classes"]["coarse"]) == sorted(COARSE)
    assert set(client.get("/openapi.json").json()["components"]["schemas"]) >= {
        "Filter",
        "FieldCondition",
        "HasId",
        "MatchValue",
        "MatchAny",
        "Range",
        "GateReport",
    }


def test_random_items_are_distinct_stored_items(client) -> None:
    body = client.get("/v1/items/random", params={"n": 12, "seed": 3}).json()
    ids = [it["id"] for it in body["items"]]
    assert body["total"] == N and len(set(ids)) == 12 and set(ids) <= set(range(N))
    again = client.get("/v1/items/random", params={"n": 12, "seed": 3}).json()
    assert [it["id"] for it in again["items"]] == ids
    assert isinstance(body["items"][0]["extra"]["price"], float)
    everything = client.get("/v1/items/random", params={"n": 100}).json()["items"]
    assert sorted(it["id"] for it in everything) == list(range(N))
    assert client.get("/v1/items/random", params={"n": 0}).status_code == 422


def image_query(client: TestClient, i: int, **data: str) -> dict[str, Any]:
    png = io.BytesIO()
    colour_image(i).save(png, format="PNG")
    files = [("images", ("q.png", png.getvalue(), "image/png"))]
    r = client.post("/v1/search/image", files=files, data={"k": "10", "gate": "coarse", **data})
    assert r.status_code == 200, r.text
    return dict(r.json()["results"][0])


def test_every_gated_answer_says_the_predicted_class_and_whether_it_gated(client) -> None:
    default = ServeSettings.model_fields["gate_min_prob"].default
    assert image_query(client, 0)["gate"]["min_prob"] == default
    probs = sorted(
        image_query(client, i, gate_min_prob="0")["gate"]["probability"] for i in range(8)
    )
    threshold = (probs[3] + probs[4]) / 2  # half the queries below it
    results = [image_query(client, i, gate_min_prob=str(threshold), k=str(N)) for i in range(8)]
    assert sorted(r["gate"]["applied"] for r in results) == [False] * 4 + [True] * 4
    for r in results:
        gate = r["gate"]
        assert gate["label"] == r["coarse"][0]["label"] and gate["min_prob"] == threshold
        assert gate["probability"] == pytest.approx(r["coarse"][0]["probability"])
        if gate["applied"]:
            assert gate["probability"] >= threshold and r["gated_to"] == [gate["label"]]
            assert all(n["metadata"]["coarse"] == gate["label"] for n in r["neighbors"])
            assert "searched coarse" in gate["message"]
        else:
            assert gate["probability"] < threshold and r["gated_to"] is None
            assert {n["metadata"]["coarse"] for n in r["neighbors"]} == set(COARSE)
            assert "not gated" in gate["message"] and "< gate_min_prob" in gate["message"]
    assert not image_query(client, 0, gate_min_prob="1")["gate"]["applied"]
    two = image_query(client, 0, gate_min_prob="0", gate_top="2")
    assert two["gate"]["searched_probability"] == pytest.approx(
        sum(c["probability"] for c in two["coarse"])
    )
    assert image_query(client, 0, gate="none")["gate"] is None


def test_a_filter_too_large_is_refused_never_a_5xx(client) -> None:
    many = {"should": [cond("brand", match={"value": f"b{i}"}) for i in range(1025)]}
    r = search(client, many)
    assert r.status_code == 422 and "more than 1024 conditions" in r.json()["message"]
    limit = ServeSettings(index_dir=Path("."), model=Path(".")).max_search_bytes(FakeEmbedder.dim)
    huge = {"must": [{"has_id": list(range(limit // 2))}]}  # ~6 bytes an id: past the body limit
    r = search(client, huge)
    assert r.status_code == 413 and "limit" in r.json()["message"], r.text[:200]
