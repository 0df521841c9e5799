"""Live updates through the API: a `coins serve` killed with SIGKILL during a stream of adds
loses no acknowledged add (tests/support/live_server.py, also the check of
benchmarks/bench_live_updates.py), a server compacts its log in the background while adds and
searches go on, and a server with admin routes is the one writer of its directory."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from live_server import ADMIN, KEY, kill_during_adds
from serve_fakes import FakeEmbedder, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.loading import OnnxArtifacts
from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index
from coins.serve.index.live import compact
from coins.serve.index.manifest import IndexManifest
from coins.serve.index.store import SearchIndex
from coins.serve.index.writer_lock import IndexLockedError


@pytest.mark.slow
def test_a_killed_server_loses_no_acknowledged_add(tiny_built, tmp_path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(tiny_built.index_dir, index_dir)
    result = kill_during_adds(index_dir, tiny_built.model, kills=2)
    assert result["acknowledged"] > 0 and result["lost"] == [], result
    # an add logged but killed before its 200 was sent is there too (durable, not acknowledged)
    assert 0 <= SearchIndex.load(index_dir).ntotal - 48 - result["acknowledged"] <= 2


# ---- background compaction, in process ------------------------------------------------------


class FakeModelRealIndex(OnnxArtifacts):
    """The real index loader with the stand-in model."""

    def load_model(self, settings: ServeSettings) -> Any:
        return FakeEmbedder()


def fake_model_index(index_dir: Path, n: int = 100) -> Path:
    """A flat index of `n` random vectors (coarse "old") for the stand-in model."""
    embedder = FakeEmbedder()
    xb = np.random.default_rng(0).standard_normal((n, embedder.dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    rows = [{"id": i, "coarse": "old"} for i in range(n)]
    build_index(
        ids, xb, rows, index_dir, index_key="flat", model_sha256=embedder.sha256, tune_queries=0
    )
    return index_dir


def settings_for(index_dir: Path, **overrides: Any) -> ServeSettings:
    base = {"index_dir": index_dir, "model": index_dir / "m.onnx", "workers": 2, "threads": 1}
    return ServeSettings(**{**base, "api_key": KEY, **overrides})


def test_the_server_compacts_its_log_while_adds_and_searches_go_on(tmp_path) -> None:
    embedder = FakeEmbedder()
    rng = np.random.default_rng(0)
    index_dir = fake_model_index(tmp_path / "index")
    settings = settings_for(index_dir, compact_after_records=8)
    failures: list[int] = []
    stop = threading.Event()
    with TestClient(create_app(settings, FakeModelRealIndex())) as client:
        wait_readyz(client, 30)

        def search() -> None:
            while not stop.is_set():
                r = client.post("/v1/search", json={"ids": [int(rng.integers(100))], "k": 3})
                if r.status_code != 200:
                    failures.append(r.status_code)

        searcher = threading.Thread(target=search)
        searcher.start()
        for i in range(1000, 1040):
            item = {"id": i, "vector": rng.standard_normal(embedder.dim).tolist(), "coarse": "new"}
            assert (
                client.post("/v1/items", json={"items": [item]}, headers=ADMIN).status_code == 200
            )
        r = client.request("DELETE", "/v1/items", json={"ids": [5, 1000]}, headers=ADMIN)
        assert r.json()["removed"] == 2
        state = client.app.state.service  # type: ignore[attr-defined]
        state.compaction.join(30)
        stop.set()
        searcher.join()
        assert failures == []
        assert IndexManifest.load(index_dir).generation > 1  # compacted while serving
        assert all(client.get(f"/v1/items/{i}").status_code == 200 for i in range(1001, 1040))
        assert client.get("/v1/items/1000").status_code == 404
    index = SearchIndex.load(index_dir)
    assert index.ntotal == 100 + 40 - 2
    assert index.ids_where(coarse="new").tolist() == list(range(1001, 1040))


def test_a_server_with_admin_routes_is_the_one_writer_of_its_directory(tmp_path) -> None:
    index_dir = fake_model_index(tmp_path / "index")
    holder = rf"pid {os.getpid()} \(coins serve"
    with TestClient(create_app(settings_for(index_dir), FakeModelRealIndex())) as client:
        wait_readyz(client, 30)
        item = {"id": 500, "vector": [1.0] + [0.0] * (FakeEmbedder().dim - 1)}
        assert client.post("/v1/items", json={"items": [item]}, headers=ADMIN).status_code == 200
        with pytest.raises(IndexLockedError, match=holder):
            compact(index_dir)
        second = create_app(settings_for(index_dir), FakeModelRealIndex())
        with TestClient(second) as other:
            r = wait_readyz(other, 30, loaded_only=True)
            assert r.status_code == 503 and "IndexLockedError" in r.json()["message"], r.json()
        readers = settings_for(index_dir, api_key=None)  # no admin routes: a reader, no lock
        with TestClient(create_app(readers, FakeModelRealIndex())) as reader:
            assert wait_readyz(reader, 30).status_code == 200
            assert reader.get("/v1/items/500").status_code == 200  # replayed from the log
    report = compact(index_dir)  # the server is gone: its lock with it
    assert (report.changes, report.ntotal) == (1, 101)
