"""A follower (`coins serve --follow`) serves each generation its directory's writer commits,
without failing a search during the switch."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import wait_readyz
from serve_real import Built

from coins.serve.api.app import create_app
from coins.serve.api.generations import FollowerConfigError
from coins.serve.index.store import SearchIndex

INTERVAL_S = 0.1
NEW_ID = 10**9


def commit_one_more(index_dir, model_sha256: str) -> np.ndarray:
    """What the one writer does: add an item, then commit the next generation (`save`)."""
    index = SearchIndex.load(index_dir, model_sha256)
    xb = np.zeros((1, index.dim), np.float32)
    xb[0, 0] = 1.0  # [1, D], unit
    index.add(np.array([NEW_ID]), xb, [{"id": NEW_ID, "coarse": "new", "fine": None}])
    index.save()
    return xb


def test_a_follower_serves_a_new_generation_with_no_failed_search(tiny_built, tmp_path) -> None:
    index_dir = shutil.copytree(tiny_built.index_dir, tmp_path / "index")
    built = Built(tiny_built.model, index_dir)
    app = create_app(built.settings(follow=True, follow_interval_s=INTERVAL_S))
    failures: list[str] = []
    searches = 0
    stop = threading.Event()
    with TestClient(app) as client:
        wait_readyz(client, 30)
        before = client.get("/v1/index").json()
        state = app.state.service
        generation = state.index.manifest.generation
        probe = np.eye(1, state.index.dim, dtype=np.float32).tolist()  # [1, D]

        def search() -> None:
            nonlocal searches
            while not stop.is_set():
                r = client.post("/v1/search", json={"vectors": probe, "k": 3})
                searches += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")

        searcher = threading.Thread(target=search)
        searcher.start()
        try:
            time.sleep(3 * INTERVAL_S)  # nothing changed: the follower keeps its index
            assert state.index.manifest.generation == generation
            xq = commit_one_more(index_dir, state.embedder.sha256)
            committed = time.monotonic()
            while client.get("/v1/index").json()["ntotal"] != before["ntotal"] + 1:
                assert time.monotonic() - committed < 30 * INTERVAL_S, "not followed in time"
                time.sleep(INTERVAL_S / 4)
            swapped = searches
            while searches < swapped + 5:  # searches go on on the new index too (however slow)
                assert time.monotonic() - committed < 300 * INTERVAL_S, "searches stopped"
                time.sleep(INTERVAL_S / 4)
        finally:
            stop.set()
            searcher.join()
        top = client.post("/v1/search", json={"vectors": xq.tolist(), "k": 1}).json()
    assert state.index.manifest.generation == generation + 1
    assert top["results"][0]["neighbors"][0]["id"] == NEW_ID
    assert failures == []


def test_a_failed_load_keeps_serving_and_the_next_generation_is_followed(
    tiny_built, tmp_path, caplog
) -> None:
    index_dir = shutil.copytree(tiny_built.index_dir, tmp_path / "index")
    app = create_app(
        Built(tiny_built.model, index_dir).settings(follow=True, follow_interval_s=INTERVAL_S)
    )
    with TestClient(app) as client:
        wait_readyz(client, 30)
        ntotal = client.get("/v1/index").json()["ntotal"]
        manifest = index_dir / "index.json"
        good = manifest.read_text()
        served = app.state.service.index.manifest.generation
        broken = json.loads(good)
        broken["generation"] = served + 100
        broken["files"]["index"]["name"] = "index-missing.faiss"
        manifest.write_text(json.dumps(broken))  # a new generation whose file is missing
        refused = f"generation {served + 100} not loaded, still serving {served}"
        deadline = time.monotonic() + 300 * INTERVAL_S  # polls every interval; slow when loaded
        while refused not in caplog.text:
            assert time.monotonic() < deadline, "the broken generation was never tried"
            time.sleep(INTERVAL_S / 4)
        assert app.state.service.index.manifest.generation == served
        probe = np.eye(1, app.state.service.index.dim).tolist()  # [1, D]
        assert client.post("/v1/search", json={"vectors": probe, "k": 1}).status_code == 200
        manifest.write_text(good)  # back to the served generation: nothing to load
        commit_one_more(index_dir, app.state.service.embedder.sha256)
        deadline = time.monotonic() + 30 * INTERVAL_S
        while client.get("/v1/index").json()["ntotal"] != ntotal + 1:
            assert time.monotonic() < deadline, "the next generation was not followed"
            time.sleep(INTERVAL_S / 4)


def test_a_follower_with_an_api_key_is_refused(tiny_built) -> None:
    with pytest.raises(FollowerConfigError, match="expected no --api-key"):
        create_app(tiny_built.settings(follow=True, api_key="k3y"))
