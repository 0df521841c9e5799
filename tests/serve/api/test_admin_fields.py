"""Admin adds against the index's typed fields (422 naming the field, nothing written), and an
add whose write-ahead log cannot be written (a full disk): 507 naming the cause, memory and
disk agreeing, nothing acknowledged lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from live_server import ADMIN, KEY
from serve_fakes import FakeEmbedder, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.loading import OnnxArtifacts
from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index
from coins.serve.index.store import SearchIndex


class FakeModelRealIndex(OnnxArtifacts):
    def load_model(self, settings: ServeSettings) -> Any:
        return FakeEmbedder()


def catalogue_index(index_dir: Path, n: int = 40) -> Path:
    embedder = FakeEmbedder()
    xb = np.random.default_rng(0).standard_normal((n, embedder.dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    rows = [{"id": i, "coarse": "old", "price": f"{i}.25", "brand": f"b{i % 4}"} for i in range(n)]
    build_index(
        np.arange(n), xb, rows, index_dir, "flat", model_sha256=embedder.sha256, tune_queries=0
    )
    return index_dir


@pytest.fixture
def client(tmp_path: Path):
    index_dir = catalogue_index(tmp_path / "index")
    settings = ServeSettings(
        index_dir=index_dir, model=index_dir / "m.onnx", workers=2, threads=1, api_key=KEY
    )
    with TestClient(create_app(settings, FakeModelRealIndex())) as c:
        wait_readyz(c, 30)
        c.index_dir = index_dir  # type: ignore[attr-defined]
        yield c


def item(i: int, **extra: Any) -> dict[str, Any]:
    v = np.random.default_rng(i).standard_normal(FakeEmbedder().dim)
    return {"id": i, "vector": v.tolist(), "coarse": "new", "extra": extra}


def test_an_add_of_a_wrong_type_answers_422_naming_the_field_and_writes_nothing(client) -> None:
    r = client.post("/v1/items", json={"items": [item(100, price="55.49")]}, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert "item 100: field 'price'" in r.json()["message"]
    assert client.get("/v1/items/100").status_code == 404
    assert SearchIndex.load(client.index_dir).ntotal == 40  # nothing in the log either
    r = client.post("/v1/items", json={"items": [item(100, price=55.49)]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert client.get("/v1/items/100").json()["extra"] == {"price": 55.49}  # typed, not "55.49"


def test_an_add_the_full_disk_refuses_answers_507_and_changes_nothing(client, monkeypatch):
    fsync = os.fsync

    def full_once(fd: int) -> None:
        """The record's fsync fails as on a full disk; cutting it off then works (the
        truncation frees the space)."""
        monkeypatch.setattr(os, "fsync", fsync)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_once)
    r = client.post("/v1/items", json={"items": [item(101, price=1.0)]}, headers=ADMIN)
    assert r.status_code == 507, r.text
    assert "No space left on device" in r.json()["message"]
    assert client.get("/v1/items/101").status_code == 404  # memory: not applied
    monkeypatch.setattr(os, "fsync", full_once)
    r = client.request("DELETE", "/v1/items", json={"ids": [3]}, headers=ADMIN)
    assert r.status_code == 507, r.text
    assert client.get("/v1/items/3").status_code == 200
    r = client.post("/v1/items", json={"items": [item(102, price=2.0)]}, headers=ADMIN)
    assert r.status_code == 200, r.text
    loaded = SearchIndex.load(client.index_dir)  # disk: the log holds the acknowledged add only
    assert loaded.ntotal == 41
    assert [m is not None for m in loaded.metadata(np.array([101, 102, 3]))] == [False, True, True]
