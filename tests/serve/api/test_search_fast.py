"""The fast /v1/search path (issue 25) on a real IVF index: batch searches over HTTP return the
neighbours of in-process `SearchIndex.search` at the same parameters, whichever body (JSON
numbers, base64 float32) and whether answered on the event loop or in the pool; the client
sends the compact body to a server that takes it, and JSON numbers to one that does not."""

from __future__ import annotations

import base64
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEmbedder, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.schemas import SearchResponse
from coins.serve.api.settings import ServeSettings
from coins.serve.client.http import SearchClient
from coins.serve.index.build import build_index
from coins.serve.index.store import SearchIndex

D, N, NQ, K = 16, 3000, 40, 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(np.random.default_rng(0).standard_normal((30, D)))
    return unit(centres[rng.integers(0, 30, n)] + 0.3 * rng.standard_normal((n, D)))


class IndexArtifacts:
    """Artifacts of create_app: the tests' fake embedder and a real index directory."""

    def __init__(self, index_dir) -> None:
        self.index_dir = index_dir
        self.embedder = FakeEmbedder()
        self.embedder.dim = D

    def load_model(self, settings: ServeSettings) -> FakeEmbedder:
        return self.embedder

    def load_index(self, settings: ServeSettings, model_sha256: str) -> SearchIndex:
        return SearchIndex.load(self.index_dir)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ivf") / "index"
    rows = [{"id": i * 3 + 5, "coarse": f"c{i % 4}", "sku": i * 7} for i in range(N)]
    # nprobe is tuned to 0.95 recall: fewer lists than nlist are searched, as in production
    build_index(np.arange(N) * 3 + 5, clustered(N, 1), rows, path, index_key="IVF32,Flat")
    assert SearchIndex.load(path).manifest.index_params["nprobe"] < 32
    return path


def client_for(index_dir, tmp_path, **options) -> TestClient:
    settings = ServeSettings(index_dir=index_dir, model=tmp_path / "m.onnx", **options)
    client = TestClient(create_app(settings, IndexArtifacts(index_dir)))
    client.__enter__()
    wait_readyz(client, 30)
    return client


def ids_scores(body: dict) -> tuple[np.ndarray, np.ndarray]:
    SearchResponse.model_validate(body)  # the documented shape
    ids = [[n["id"] for n in r["neighbors"]] for r in body["results"]]
    scores = [[n["score"] for n in r["neighbors"]] for r in body["results"]]
    return np.asarray(ids), np.asarray(scores)


def b64(x: np.ndarray) -> str:
    return base64.b64encode(x.astype("<f4").tobytes()).decode()


@pytest.mark.parametrize("inline_ms", [0.0, 1000.0])  # always the pool; the loop when cheap
def test_batch_search_over_http_equals_in_process(index_dir, tmp_path, inline_ms) -> None:
    xq = clustered(NQ, 2)
    D_ref, I_ref = SearchIndex.load(index_dir).search(xq, K)  # [NQ, K] each
    client = client_for(index_dir, tmp_path, inline_search_ms=inline_ms)
    try:
        for batch in (1, 16, NQ):
            for body in ({"vectors": xq[:batch].tolist()}, {"vectors_base64": b64(xq[:batch])}):
                r = client.post("/v1/search", json={**body, "k": K})
                assert r.status_code == 200, r.text
                ids, scores = ids_scores(r.json())
                np.testing.assert_array_equal(ids, I_ref[:batch])
                np.testing.assert_allclose(scores, D_ref[:batch], rtol=0, atol=1e-6)
        for _ in range(5):  # the cost estimate has seen searches: later ones may go inline
            r = client.post("/v1/search", json={"vectors": xq[:2].tolist(), "k": K})
            np.testing.assert_array_equal(ids_scores(r.json())[0], I_ref[:2])
    finally:
        client.__exit__(None, None, None)


def test_metadata_is_the_items_own(index_dir, tmp_path) -> None:
    client = client_for(index_dir, tmp_path)
    try:
        r = client.post("/v1/search", json={"vectors_base64": b64(clustered(3, 4)), "k": 4})
        for result in r.json()["results"]:
            for n in result["neighbors"]:
                i = (n["id"] - 5) // 3
                assert n["metadata"] == {
                    "id": n["id"], "path": None, "coarse": f"c{i % 4}", "fine": None,
                    "extra": {"sku": i * 7},
                }  # fmt: skip
        r = client.post("/v1/search", json={"vectors": [[1.0] * D], "with_metadata": False})
        assert all(n["metadata"] is None for n in r.json()["results"][0]["neighbors"])
    finally:
        client.__exit__(None, None, None)


def test_metadata_the_index_cannot_write_as_json_falls_back_to_the_same_answer(
    index_dir, tmp_path, monkeypatch
) -> None:
    body = {"vectors_base64": b64(clustered(3, 4)), "k": 5}
    client = client_for(index_dir, tmp_path)
    try:
        expected = client.post("/v1/search", json=body).json()["results"]

        def unreadable(self, ids):
            raise sqlite3.OperationalError("malformed JSON")

        monkeypatch.setattr(SearchIndex, "metadata_json", unreadable)
        assert client.post("/v1/search", json=body).json()["results"] == expected
    finally:
        client.__exit__(None, None, None)


def test_an_unexpected_error_is_a_counted_500_and_the_server_goes_on(
    index_dir, tmp_path, monkeypatch, caplog
) -> None:
    client = client_for(index_dir, tmp_path)
    try:
        with monkeypatch.context() as m:
            m.setattr(SearchIndex, "metadata_json", lambda self, ids: 1 / 0)
            r = client.post("/v1/search", json={"vectors": [[1.0] * D]})
        assert r.status_code == 500 and r.json()["message"] == "internal error: ZeroDivisionError"
        assert "unhandled error on POST /v1/search" in caplog.text
        assert client.post("/v1/search", json={"vectors": [[1.0] * D]}).status_code == 200
        line = 'coins_http_requests_total{method="POST",route="/v1/search",status="500"} 1.0'
        assert line in client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"vectors_base64": "not base64!"}, "not base64"),
        ({"vectors_base64": b64(np.ones((1, D + 1)))}, f"multiple of {4 * D} bytes"),
        ({"vectors_base64": b64(np.zeros((1, D)))}, "all zeros"),
        ({"vectors_base64": b64(np.full((1, D), np.nan))}, "finite"),
        ({"vectors_base64": b64(np.ones((1, D))), "vectors": [[1.0] * D]}, "exactly one"),
        ({"vectors_base64": ""}, "at least one"),
    ],
)
def test_bad_base64_vectors_are_422(index_dir, tmp_path, body, words) -> None:
    client = client_for(index_dir, tmp_path)
    try:
        r = client.post("/v1/search", json=body)
        assert r.status_code == 422 and words in r.json()["message"], r.text
    finally:
        client.__exit__(None, None, None)


def test_base64_queries_count_against_the_query_limit(index_dir, tmp_path) -> None:
    client = client_for(index_dir, tmp_path, max_vectors=4)
    try:
        r = client.post("/v1/search", json={"vectors_base64": b64(clustered(5, 3))})
        assert r.status_code == 413 and "5 queries" in r.json()["message"]
    finally:
        client.__exit__(None, None, None)


def test_the_client_sends_base64_when_the_server_takes_it(index_dir, tmp_path) -> None:
    xq = clustered(8, 5)
    _, I_ref = SearchIndex.load(index_dir).search(xq, K)
    app_client = client_for(index_dir, tmp_path)
    sent: list[bytes] = []
    app_client.event_hooks["request"] = [lambda request: sent.append(request.read())]
    try:
        client = SearchClient("http://testserver")
        client.http = app_client
        found = client.search_vectors(xq, k=K)
        assert [[n["id"] for n in q["neighbors"]] for q in found] == I_ref.tolist()
        assert b'"vectors_base64"' in sent[-1] and client.takes_base64()
        client._base64 = False  # as for a server whose document has no vectors_base64
        found = client.search_vectors(xq, k=K)
        assert [[n["id"] for n in q["neighbors"]] for q in found] == I_ref.tolist()
        assert b'"vectors":' in sent[-1]
    finally:
        app_client.__exit__(None, None, None)


def test_searches_are_counted_under_their_route_whatever_their_status(index_dir, tmp_path):
    # SearchEndpoint answers before the router: it must label the metrics as the router would
    client = client_for(index_dir, tmp_path, max_vectors=2)
    try:
        assert client.post("/v1/search", json={"vectors": [[1.0] * D]}).status_code == 200
        assert client.post("/v1/search", json={"vectors": [[1.0] * (D + 1)]}).status_code == 422
        assert client.post("/v1/search", json={"k": 0}).status_code == 422  # pydantic's 422
        assert client.post("/v1/search", json={"vectors": [[1.0] * D] * 3}).status_code == 413
        assert client.post("/v1/search", content=b"{").status_code == 422
        assert client.get("/v1/search").status_code == 405  # the router's, with its Allow
        text = client.get("/metrics").text
        for status, count in (("200", 1), ("422", 3), ("413", 1)):
            line = (
                f'coins_http_requests_total{{method="POST",route="/v1/search",status="{status}"}}'
            )
            assert f"{line} {count}.0" in text, (status, text)
        assert 'coins_queries_total{kind="vector"} 1.0' in text
    finally:
        client.__exit__(None, None, None)


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_writes_in_one_turn_of_the_loop_go_out_as_one() -> None:
    import asyncio

    from coins.serve.api.app import CoalescedWrites

    async def main() -> RecordingTransport:
        raw = RecordingTransport()
        t = CoalescedWrites(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")  # uvicorn: the head, then the body
        t.write(b"{}")
        assert raw.writes == []
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        t.write(b"bye")
        t.close()  # sends what is pending first
        assert raw.writes[-1] == b"bye" and raw.closed
        assert t.get_extra_info("peername") == "info peername"
        return raw

    asyncio.run(main())
