"""The search API on a real exported model and index: in-process (TestClient) and as a server
process (uvicorn on a free loopback port), with the client and `coins query`."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import wait_readyz
from serve_real import Built, start_server, stop_server
from train_fixtures import TINY_DATA
from typer.testing import CliRunner

from coins.cli import app as cli
from coins.retrieval.data import build_dataset
from coins.retrieval.metrics import recall_at_k
from coins.serve.api.app import create_app
from coins.serve.client.http import SearchClient, SearchServiceError
from coins.serve.client.recall import png_bytes, recall_by_ids, recall_by_images
from coins.serve.index.store import SearchIndex

KEY = "k3y"


@pytest.fixture
def built(tiny_built: Built) -> Built:
    """The session's tiny model and index (tests/conftest.py): read only, copy to write."""
    return tiny_built


@pytest.fixture(scope="module")
def test_split():
    return build_dataset("synthetic-patches", "test", **TINY_DATA)


def ready_client(app) -> TestClient:
    client = TestClient(app)
    client.__enter__()
    wait_readyz(client, 30)
    return client


def test_image_search_finds_the_image_itself_with_its_coarse_class(built, test_split) -> None:
    client = ready_client(create_app(built.settings()))
    try:
        info = client.get("/v1/index").json()
        assert info["ntotal"] == 48 and info["coarse_classes"] == test_split.coarse_classes
        files = [
            ("images", (f"{i}.png", png_bytes(test_split.image(i)), "image/png")) for i in range(4)
        ]
        body = client.post("/v1/search/image", files=files, data={"k": "3"}).json()
        for i, result in enumerate(body["results"]):
            top = result["neighbors"][0]
            assert top["id"] == int(test_split.ids[i]) and top["score"] == pytest.approx(
                1, abs=1e-4
            )
            assert len(result["coarse"]) == 3
        data = {"k": "48", "gate": "coarse", "gate_min_prob": "0"}  # always gated
        gated = client.post("/v1/search/image", files=files, data=data)
        for result in gated.json()["results"]:
            assert {n["metadata"]["coarse"] for n in result["neighbors"]} == set(result["gated_to"])
        thumb = client.get(f"/v1/items/{int(test_split.ids[0])}/image")
        assert thumb.status_code == 200 and thumb.content[:4] == b"\x89PNG"
    finally:
        client.__exit__(None, None, None)


@pytest.mark.slow  # 8.7 s quiet: the whole test split through the API
def test_recall_through_the_server_equals_recall_of_the_index(built) -> None:
    proc, url = start_server(built)
    try:
        with SearchClient(url) as client:
            metrics, shown = recall_by_ids(client, batch=20)
            by_image, _ = recall_by_images(
                client, build_dataset("synthetic-patches", "test", **TINY_DATA), batch=16
            )
            assert client.index()["ntotal"] == 48 and len(shown) == 3
            with pytest.raises(SearchServiceError, match="404"):
                client.search_ids([10**9])
        index = SearchIndex.load(built.index_dir)
        ids, _, fine = index.labels()
        names = sorted(set(fine))
        expected = recall_at_k(index.reconstruct(ids), np.array([names.index(f) for f in fine]))
        for K, value in expected.items():  # tiny images repeat: exact ties may break either way
            assert metrics[f"recall@{K}"] == pytest.approx(value, abs=2 / 48)
            assert by_image[f"recall@{K}"] == pytest.approx(value, abs=0.05)  # PNG round trip
        result = CliRunner().invoke(cli, ["query", url, "--id", str(int(ids[0])), "-k", "3"])
        assert result.exit_code == 0, result.output
        assert f"query id {int(ids[0])}" in result.output and "#3" in result.output
        result = CliRunner().invoke(cli, ["query", url, "--recall", "--limit", "10"])
        assert result.exit_code == 0 and "recall@1" in result.output
    finally:
        stop_server(proc)


def test_admin_add_delete_and_reload_on_a_real_index(built, tmp_path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(built.index_dir, index_dir)
    client = ready_client(create_app(built.settings(index_dir=index_dir, api_key=KEY)))
    headers = {"X-API-Key": KEY}
    try:
        v = client.post("/v1/search", json={"ids": [64], "k": 1}).json()
        vec = np.random.default_rng(0).standard_normal(32).tolist()
        item = {"id": 5000, "vector": vec, "coarse": "big-01", "fine": "small-99"}
        added = client.post("/v1/items", json={"items": [item]}, headers=headers).json()
        assert added["ntotal"] == 49 and v["results"][0]["neighbors"]
        assert SearchIndex.load(index_dir).ntotal == 49  # persisted
        top = client.post("/v1/search", json={"vectors": [vec], "k": 1}).json()
        assert top["results"][0]["neighbors"][0]["metadata"]["fine"] == "small-99"
        gone = client.request("DELETE", "/v1/items", json={"ids": [5000, 64]}, headers=headers)
        assert gone.json()["removed"] == 2 and gone.json()["ntotal"] == 47
        shutil.rmtree(index_dir)
        shutil.copytree(built.index_dir, index_dir)
        assert client.post("/v1/reload", headers=headers).json()["ntotal"] == 48
    finally:
        client.__exit__(None, None, None)


def test_reload_does_not_fail_searches_in_flight(built) -> None:
    client = ready_client(create_app(built.settings(api_key=KEY)))
    failures: list[int] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            r = client.post("/v1/search", json={"ids": [64, 65], "k": 5})
            if r.status_code != 200:
                failures.append(r.status_code)

    workers = [threading.Thread(target=search) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        for _ in range(3):
            assert client.post("/v1/reload", headers={"X-API-Key": KEY}).status_code == 200
        stop.set()
        for w in workers:
            w.join()
        assert failures == []
    finally:
        stop.set()
        client.__exit__(None, None, None)


def test_a_model_that_does_not_match_the_index_is_not_ready(built, tmp_path) -> None:
    other = tmp_path / "other.onnx"
    other.write_bytes(built.model.read_bytes() + b"")  # same bytes: then change the index hash
    index_dir = tmp_path / "index"
    shutil.copytree(built.index_dir, index_dir)
    manifest = (index_dir / "index.json").read_text()
    sha = SearchIndex.load(index_dir).manifest.model_sha256
    (index_dir / "index.json").write_text(manifest.replace(sha, "0" * 64))
    client = TestClient(create_app(built.settings(index_dir=index_dir, model=other)))
    with client:
        r = wait_readyz(client, 30, loaded_only=True)
        assert r.status_code == 503 and "model sha256" in r.json()["message"]
