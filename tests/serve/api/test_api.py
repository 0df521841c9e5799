"""Every route and error of the search API, through TestClient, on an in-memory model and index."""

# ruff: noqa: E741

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fakes import COARSE, DIM, FakeArtifacts, colour_image, fake_gallery, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.settings import ServeSettings

KEY = "s3cret"
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
ADMIN = {"X-API-Key": KEY}


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def settings(tmp_path, **overrides) -> ServeSettings:
    base = {"index_dir": tmp_path, "model": tmp_path / "m.onnx", "workers": 2, "threads": 1}
    return ServeSettings(**{**base, **overrides})


def wait_ready(client: TestClient, timeout: float = 10) -> None:
    wait_readyz(client, timeout)


@pytest.fixture
def artifacts() -> FakeArtifacts:
    return FakeArtifacts()


@pytest.fixture
def client(tmp_path, artifacts):
    app = create_app(settings(tmp_path, api_key=KEY, max_image_bytes=50_000), artifacts)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def vectors_of(artifacts: FakeArtifacts, ids) -> list[list[float]]:
    return artifacts.index.reconstruct(np.asarray(ids)).tolist()


def test_health_ready_metrics_and_index(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "message": None}
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/index").json()
    assert info["ntotal"] == 30 and info["dim"] == DIM and info["coarse_classes"] == COARSE
    assert info["report_url"] is None
    client.post("/v1/search", json={"ids": [100], "k": 3})
    text = client.get("/metrics").text
    assert 'coins_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'coins_stage_seconds_count{stage="search"}' in text
    assert "coins_index_items 30.0" in text


def test_search_by_vectors_matches_exact_search(client, artifacts) -> None:
    xq = vectors_of(artifacts, [105, 117])
    body = client.post("/v1/search", json={"vectors": xq, "k": 5}).json()
    D, I = artifacts.index.search(np.asarray(xq, np.float32), 5)
    for q, result in enumerate(body["results"]):
        assert [n["id"] for n in result["neighbors"]] == I[q].tolist()
        assert [n["rank"] for n in result["neighbors"]] == list(range(5))
        np.testing.assert_allclose([n["score"] for n in result["neighbors"]], D[q], atol=1e-5)
    first = body["results"][0]["neighbors"][0]
    assert first["id"] == 105 and first["metadata"]["coarse"] == COARSE[5 % 3]
    assert first["metadata"]["extra"] == {"colour": 5}


def test_query_vectors_are_normalised_so_scores_are_cosines(client, artifacts) -> None:
    xq = (np.asarray(vectors_of(artifacts, [103])) * 7.5).tolist()
    top = client.post("/v1/search", json={"vectors": xq, "k": 1}).json()["results"][0]
    assert top["neighbors"][0]["id"] == 103
    assert top["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_search_by_id_never_returns_the_item_itself(client) -> None:
    body = client.post("/v1/search", json={"ids": [100, 101], "k": 29}).json()
    for qid, result in zip([100, 101], body["results"], strict=True):
        ids = [n["id"] for n in result["neighbors"]]
        assert qid not in ids and len(ids) == 29


def test_filter_is_applied_inside_the_search(client) -> None:
    shoes_1_or_4 = {"must": [{"key": "coarse", "match": {"value": "shoes"}},
                             {"key": "fine", "match": {"any": ["1", "4"]}}]}  # fmt: skip
    body = {"ids": [100], "k": 50, "filter": shoes_1_or_4}
    neighbors = client.post("/v1/search", json=body).json()["results"][0]["neighbors"]
    assert neighbors and all(n["metadata"]["coarse"] == "shoes" for n in neighbors)
    assert {n["metadata"]["fine"] for n in neighbors} <= {"1", "4"}
    only = {"vectors": [[1.0] * DIM], "k": 10, "filter": {"must": [{"has_id": [110, 111, 999]}]}}
    neighbors = client.post("/v1/search", json=only).json()["results"][0]["neighbors"]
    assert sorted(n["id"] for n in neighbors) == [110, 111]
    none = {
        "vectors": [[1.0] * DIM],
        "k": 3,
        "filter": {"must": [{"key": "coarse", "match": {"value": "hats"}}]},
    }
    assert client.post("/v1/search", json=none).json()["results"][0]["neighbors"] == []


def test_without_metadata(client) -> None:
    body = client.post("/v1/search", json={"ids": [100], "k": 2, "with_metadata": False}).json()
    assert all(n["metadata"] is None for n in body["results"][0]["neighbors"])


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"vectors": [[1.0] * (DIM + 1)], "k": 3}, 422, "dimension 8"),
        ({"vectors": [[1.0] * DIM, [1.0] * 3]}, 422, "dimension 8"),
        ({"vectors": [[0.0] * DIM]}, 422, "all zeros"),
        ({"vectors": [[1e38] * DIM]}, 422, "finite"),
        ({"vectors": [[1.0] * DIM], "k": 1001}, 422, "less than or equal to 1000"),
        ({"vectors": [[1.0] * DIM], "k": 0}, 422, "greater than or equal to 1"),
        ({"vectors": [[1.0] * DIM], "ids": [100]}, 422, "exactly one"),
        ({"k": 3}, 422, "exactly one"),
        ({"vectors": []}, 422, "at least one"),
        ({"ids": [100, 5]}, 404, "[5]"),
        ({"ids": [100], "filter": {"colour": [1]}}, 422, "filter.colour: Extra inputs"),
        (
            {"ids": [100], "filter": {"must": [{"key": "hue", "match": {"value": 1}}]}},
            422,
            "unknown field 'hue'",
        ),
    ],
)
def test_search_errors_are_precise(client, body, status, words) -> None:
    r = client.post("/v1/search", json=body)
    assert r.status_code == status, r.json()
    assert words in r.json()["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client, literal) -> None:
    text = '{"vectors": [[' + literal + ", 1, 1, 1, 1, 1, 1, 1]]}"
    r = client.post("/v1/search", content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "NaN or infinite" in r.json()["message"]


def test_malformed_json_is_422(client) -> None:
    r = client.post("/v1/search", content="{", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["message"]


def test_server_limits_on_k_and_batch(tmp_path, artifacts) -> None:
    app = create_app(settings(tmp_path, max_k=5, max_vectors=2), artifacts)
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/v1/search", json={"ids": [100], "k": 6})
        assert r.status_code == 422 and "limit of 5" in r.json()["message"]
        r = c.post("/v1/search", json={"ids": [100, 101, 102], "k": 2})
        assert r.status_code == 413 and "limit of 2" in r.json()["message"]


def test_search_by_image_finds_the_same_colour(client) -> None:
    files = [("images", ("a.png", png(colour_image(7)), "image/png")),
             ("images", ("b.jpg", png(colour_image(12), "JPEG"), "image/jpeg"))]  # fmt: skip
    body = client.post("/v1/search/image", files=files, data={"k": "4"}).json()
    assert [r["neighbors"][0]["id"] for r in body["results"]] == [107, 112]
    guess = body["results"][0]["coarse"]
    assert len(guess) == 3 and guess[0]["label"] in COARSE
    assert sum(g["probability"] for g in guess) == pytest.approx(1.0, abs=1e-5)


def test_gate_coarse_searches_only_the_predicted_classes(client) -> None:
    files = [("images", ("a.png", png(colour_image(i)), "image/png")) for i in range(6)]
    data = {"k": "30", "gate": "coarse", "gate_min_prob": "0"}  # always gated
    body = client.post("/v1/search/image", files=files, data=data).json()
    for result in body["results"]:
        gate = result["gated_to"]
        assert gate == [result["coarse"][0]["label"]]
        assert all(n["metadata"]["coarse"] in gate for n in result["neighbors"])
    two = client.post("/v1/search/image", files=files[:1], data={**data, "gate_top": "2"}).json()[
        "results"
    ][0]
    assert len(two["gated_to"]) == 2 and len(two["neighbors"]) == 20


def test_gate_needs_a_coarse_head(tmp_path) -> None:
    app = create_app(settings(tmp_path), FakeArtifacts(coarse=False))
    with TestClient(app) as c:
        wait_ready(c)
        files = [("images", ("a.png", png(colour_image(1)), "image/png"))]
        r = c.post("/v1/search/image", files=files, data={"gate": "coarse"})
        assert r.status_code == 422 and "coarse head" in r.json()["message"]
        plain = c.post("/v1/search/image", files=files).json()["results"][0]
        assert plain["coarse"] is None and plain["neighbors"]


def test_image_filter_is_json(client) -> None:
    files = [("images", ("a.png", png(colour_image(1)), "image/png"))]
    data = {
        "k": "10",
        "filter": json.dumps({"must": [{"key": "coarse", "match": {"value": "bags"}}]}),
    }
    result = client.post("/v1/search/image", files=files, data=data).json()["results"][0]
    assert all(n["metadata"]["coarse"] == "bags" for n in result["neighbors"])
    r = client.post("/v1/search/image", files=files, data={"filter": "[1"})
    assert r.status_code == 422 and "filter" in r.json()["message"]


def test_embed_returns_unit_vectors(client) -> None:
    files = [("images", ("a.png", png(colour_image(3)), "image/png"))]
    body = client.post("/v1/embed", files=files).json()
    v = np.asarray(body["vectors"])
    assert v.shape == (1, DIM) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert body["model_sha256"] == "f" * 64 and len(body["coarse_probs"][0]) == len(COARSE)


@pytest.mark.parametrize(
    ("name", "data", "ctype", "status", "words"),
    [
        ("a.txt", b"hello", "text/plain", 415, "unsupported content type 'text/plain'"),
        ("a.png", b"not an image at all", "image/png", 415, "not a supported image"),
        ("a.png", b"", "image/png", 422, "empty file"),
        ("a.png", png(NOISE)[:300], "image/png", 422, "could not decode"),
        ("big.png", b"x" * 50_001, "image/png", 413, "limit of 50,000 bytes"),
    ],
)
def test_upload_errors_are_precise(client, name, data, ctype, status, words) -> None:
    """Type by header then by bytes (415), emptiness and truncation (422), size (413)."""
    r = client.post("/v1/search/image", files=[("images", (name, data, ctype))])
    assert r.status_code == status, r.json()
    assert words in r.json()["message"]


def test_decompression_bomb_is_413(tmp_path, artifacts) -> None:
    app = create_app(settings(tmp_path, max_image_pixels=1000), artifacts)
    with TestClient(app) as c:
        wait_ready(c)
        bomb = png(Image.new("L", (100, 100)))
        r = c.post("/v1/search/image", files=[("images", ("bomb.png", bomb, "image/png"))])
        assert r.status_code == 413 and "100x100 pixels" in r.json()["message"]


def test_request_body_and_image_count_limits(tmp_path, artifacts) -> None:
    app = create_app(settings(tmp_path, max_request_bytes=2000, max_images=2), artifacts)
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/v1/search/image", files=[("images", ("a.png", b"x" * 5000, "image/png"))])
        assert r.status_code == 413 and "request body" in r.json()["message"]
        files = [("images", (f"{i}.png", png(colour_image(i)), "image/png")) for i in range(3)]
        r = c.post("/v1/search/image", files=files)
        assert r.status_code == 413 and "3 images" in r.json()["message"]


def test_not_ready_is_503(tmp_path) -> None:
    artifacts = FakeArtifacts()
    artifacts.index = None  # type: ignore[assignment]

    class Broken(FakeArtifacts):
        def load_index(self, settings, model_sha256):
            raise FileNotFoundError("no index.json in /nowhere")

    app = create_app(settings(tmp_path), Broken())
    with TestClient(app) as c:
        r = wait_readyz(c, 5, loaded_only=True)
        assert r.status_code == 503 and "no index.json" in r.json()["message"]
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/search", json={"ids": [1]})
        assert r.status_code == 503 and "not ready" in r.json()["message"]


def test_items_list_get_and_thumbnail(client) -> None:
    page = client.get("/v1/items", params={"offset": 2, "limit": 3}).json()
    assert page["total"] == 30 and [i["id"] for i in page["items"]] == [102, 103, 104]
    shoes = client.get("/v1/items", params={"coarse": "shoes", "limit": 100}).json()
    assert shoes["total"] == 10
    assert client.get("/v1/items/104").json()["fine"] == "4"
    r = client.get("/v1/items/5")
    assert r.status_code == 404 and "not in the index" in r.json()["message"]
    r = client.get("/v1/items/104/image")  # the fake gallery has no files nor data set
    assert r.status_code == 404 and "no image" in r.json()["message"]
    assert client.get("/v1/items/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)


def test_admin_routes_need_the_key(client) -> None:
    body = {"items": [{"id": 1, "vector": [1.0] * DIM}]}
    assert client.post("/v1/items", json=body).status_code == 401
    r = client.post("/v1/items", json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "wrong API key" in r.json()["message"]
    ok = client.post("/v1/items", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_admin_routes_are_off_without_a_key(tmp_path, artifacts) -> None:
    with TestClient(create_app(settings(tmp_path), artifacts)) as c:
        wait_ready(c)
        r = c.post("/v1/reload", headers=ADMIN)
        assert r.status_code == 403 and "no API key configured" in r.json()["message"]


def test_add_search_and_delete_items(client, artifacts) -> None:
    v = np.zeros(DIM)
    v[0] = 1
    item = {"id": 7, "vector": v.tolist(), "coarse": "hats", "fine": 3, "extra": {"sku": "x"}}
    r = client.post("/v1/items", json={"items": [item]}, headers=ADMIN)
    assert r.json() == {"added": 1, "removed": 0, "missing": [], "ntotal": 31}
    assert artifacts.index.log.records == 1  # logged before acknowledged
    hit = client.post("/v1/search", json={"vectors": [v.tolist()], "k": 1}).json()
    top = hit["results"][0]["neighbors"][0]
    assert (
        top["id"] == 7
        and top["metadata"]["fine"] == "3"
        and top["metadata"]["extra"] == {"sku": "x"}
    )
    again = client.post("/v1/items", json={"items": [item]}, headers=ADMIN)
    assert again.status_code == 409 and "already in the index: [7]" in again.json()["message"]
    r = client.request("DELETE", "/v1/items", json={"ids": [7, 8]}, headers=ADMIN)
    assert r.json() == {"added": 0, "removed": 1, "missing": [8], "ntotal": 30}


@pytest.mark.parametrize(
    ("items", "words"),
    [
        ([{"id": 1, "vector": [1.0] * 3}], "dimension 8"),
        ([{"id": 1}], "needs a `vector`"),
        ([{"id": 1, "vector": [1.0] * DIM}, {"id": 1, "vector": [1.0] * DIM}], "unique"),
    ],
)
def test_add_errors(client, items, words) -> None:
    r = client.post("/v1/items", json={"items": items}, headers=ADMIN)
    assert r.status_code == 422 and words in r.json()["message"]


def test_add_items_by_image(client) -> None:
    files = [("images", ("a.png", png(colour_image(500)), "image/png"))]
    items = json.dumps([{"id": 9, "coarse": "bags"}])
    r = client.post("/v1/items/images", files=files, data={"items": items}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["ntotal"] == 31
    found = client.post("/v1/search/image", files=files, data={"k": "1"}).json()
    assert found["results"][0]["neighbors"][0]["id"] == 9
    bad = client.post("/v1/items/images", files=files, data={"items": "[]"}, headers=ADMIN)
    assert bad.status_code == 422 and "1 images but 0 items" in bad.json()["message"]


def test_reload_swaps_the_index_and_keeps_it_on_failure(client, artifacts) -> None:
    artifacts.next_index = fake_gallery(12, artifacts.embedder)
    r = client.post("/v1/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["ntotal"] == 12
    artifacts.next_index = ValueError("checksum of index.faiss differs")
    r = client.post("/v1/reload", headers=ADMIN)
    assert r.status_code == 409 and "still serving the previous index" in r.json()["message"]
    assert client.get("/v1/index").json()["ntotal"] == 12


def test_page_and_static_assets(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "coins search" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../settings.py").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "coins search"


def test_report_dir_is_linked_and_served(tmp_path, artifacts) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "index.html").write_text("<h1>report</h1>")
    with TestClient(create_app(settings(tmp_path, report_dir=report), artifacts)) as c:
        wait_ready(c)
        assert c.get("/v1/index").json()["report_url"] == "/report/"
        assert "report" in c.get("/report/").text
