"""Admin writes racing reloads and searches on a real FAISS index, a killed save's leftovers, and
image paths confined to the gallery folders.

`race` is the randomized concurrency check: adds, deletes and reloads at once under searching
clients. It speaks HTTP through any httpx-style client, so benchmarks/bench_serve_races.py runs
the same check against a real `coins serve` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from races import ADMIN, KEY, race
from serve_fakes import FakeEmbedder, colour_image, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.loading import OnnxArtifacts
from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index
from coins.serve.index.manifest import gallery_roots
from coins.serve.index.store import STALE_TMP_SECONDS, SearchIndex

GALLERY = 200  # items of the test index, ids 0..199, images gallery/<id>.png


# ---- the race ------------------------------------------------------------------------------


# ---- a small real index served with a stand-in model -----------------------------------------


class RealIndex(OnnxArtifacts):
    """The real index loader (`SearchIndex.load`, checksums and all) with the fake embedder."""

    def __init__(self) -> None:
        self.embedder = FakeEmbedder()
        self.loading = threading.Event()  # set while a load waits at `gate`
        self.gate: threading.Event | None = None

    def load_model(self, settings: ServeSettings) -> Any:
        return self.embedder

    def load_index(self, settings: ServeSettings, model_sha256: str) -> Any:
        if self.gate is not None:
            self.loading.set()
            self.gate.wait(30)
        return super().load_index(settings, model_sha256)


def build_gallery(root: Path, n: int = GALLERY, source: dict[str, Any] | None = None) -> Path:
    """A flat index of n colour images saved in root/gallery, their folder recorded."""
    embedder = FakeEmbedder()
    gallery = root / "gallery"
    gallery.mkdir(parents=True)
    images = [colour_image(i) for i in range(n)]
    for i, img in enumerate(images):
        img.save(gallery / f"{i}.png")
    xb = embedder.embed_images(images).vectors
    ids = np.arange(n, dtype=np.int64)
    rows = [
        {"id": i, "path": str(gallery / f"{i}.png"), "coarse": f"c{i % 3}", "fine": str(i % 6)}
        for i in range(n)
    ]
    source = {"kind": "images", "root": str(gallery)} if source is None else source
    build_index(
        ids, xb, rows, root / "index", index_key="flat", model_sha256=embedder.sha256,
        source=source, tune_queries=0,
    )  # fmt: skip
    return root / "index"


def serve(index_dir: Path, artifacts: RealIndex | None = None, **overrides: Any) -> TestClient:
    settings = ServeSettings(
        index_dir=index_dir, model=index_dir / "m.onnx", api_key=KEY, workers=4, threads=1,
        **overrides,
    )  # fmt: skip
    return TestClient(create_app(settings, artifacts or RealIndex()))


def run_race(tmp_path: Path, adds: int, reloads: int, deletes: int, searchers: int) -> None:
    index_dir = build_gallery(tmp_path)
    gallery = tmp_path / "gallery"
    with serve(index_dir) as client:
        wait_readyz(client, 30)
        counts = race(
            client, adds=adds, reloads=reloads, deletes=deletes, searchers=searchers,
            gallery_ids=list(range(GALLERY)), dim=FakeEmbedder.dim, seed=adds + reloads,
            image_path=lambda i: str(gallery / f"{i % GALLERY}.png") if i % 2 else None,
        )  # fmt: skip
        print(counts.summary())
        assert counts.ok, (counts.server_errors[:5], counts.refused[:5], counts.summary())
        assert counts.adds == adds and counts.deletes == deletes and counts.reloads == reloads
        ntotal = client.get("/v1/index").json()["ntotal"]
    assert ntotal == GALLERY + adds - deletes
    assert SearchIndex.load(index_dir).ntotal == ntotal  # committed, not just in memory


def test_admin_writes_racing_reloads_lose_nothing(tmp_path) -> None:
    run_race(tmp_path, adds=30, reloads=30, deletes=10, searchers=4)


@pytest.mark.slow
def test_admin_writes_racing_reloads_lose_nothing_full(tmp_path) -> None:
    run_race(tmp_path, adds=300, reloads=300, deletes=100, searchers=8)


def test_searches_go_on_during_a_reload_and_writes_wait_for_it(tmp_path) -> None:
    artifacts = RealIndex()
    with serve(build_gallery(tmp_path), artifacts) as client:
        wait_readyz(client, 30)
        artifacts.gate = threading.Event()
        answers: dict[str, int] = {}

        def call(name: str, method: str, url: str, **kwargs: Any) -> threading.Thread:
            def run() -> None:
                answers[name] = client.request(method, url, headers=ADMIN, **kwargs).status_code

            thread = threading.Thread(target=run)
            thread.start()
            return thread

        reload = call("reload", "POST", "/v1/reload")
        assert artifacts.loading.wait(10)  # the reload is loading, holding the writer lock
        item = {"id": 999, "vector": [1.0] * FakeEmbedder.dim}
        add = call("add", "POST", "/v1/items", json={"items": [item]})
        r = client.post("/v1/search", json={"ids": [3], "k": 2})
        assert r.status_code == 200  # searches are not blocked by the load
        time.sleep(0.2)
        assert add.is_alive() and "add" not in answers  # the add waits for the reload
        artifacts.gate.set()
        reload.join(10)
        add.join(10)
        assert answers == {"reload": 200, "add": 200}
        assert client.get("/v1/items/999").status_code == 200
        artifacts.gate = None
        assert client.post("/v1/reload", headers=ADMIN).json()["ntotal"] == GALLERY + 1


# ---- a killed save's temporary files ----------------------------------------------------------


def killed_save(path: Path) -> None:
    """A process that starts `atomic_path(path)`, writes, and dies before the rename."""
    code = (
        "import os, sys\n"
        "from coins.retrieval.atomic import atomic_path\n"
        "tmp = atomic_path(sys.argv[1]).__enter__()\n"
        "tmp.write_bytes(b'half a FAISS file')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_a_later_save_removes_a_killed_saves_temporary_files(tmp_path) -> None:
    index_dir = build_gallery(tmp_path)  # generation 1
    killed_save(index_dir / "index-000002.faiss")  # a save of generation 2, killed
    (leftover,) = [p.name for p in index_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftover.startswith(".index-000002.faiss.")
    in_flight = index_dir / ".index-000009.faiss.x1y2z3.tmp"  # a later save, maybe running
    in_flight.write_bytes(b"")
    old_manifest, new_manifest = index_dir / ".index.json.a.tmp", index_dir / ".index.json.b.tmp"
    for path in (old_manifest, new_manifest):
        path.write_text("{}")
    hour_ago = time.time() - STALE_TMP_SECONDS - 60
    os.utime(old_manifest, (hour_ago, hour_ago))

    index = SearchIndex.load(index_dir)
    index.remove(np.array([0]))
    index.save()  # commits generation 2, then cleans up
    names = sorted(p.name for p in index_dir.iterdir() if p.is_file())
    assert names == [
        ".index-000009.faiss.x1y2z3.tmp", ".index.json.b.tmp",
        "index-000002.faiss", "index.json", "metadata-000002.sqlite",
    ]  # fmt: skip
    assert SearchIndex.load(index_dir).ntotal == GALLERY - 1


# ---- image paths confined to the gallery folders ----------------------------------------------


def test_build_records_the_gallery_folders(tmp_path) -> None:
    rows = [{"path": "/data/shop/a/1.png"}, {"path": "/data/shop/a/b/2.png"}, {"path": "rel.png"}]
    assert gallery_roots({"kind": "manifest", "path": "/data/list.csv"}, rows) == ["/data"]
    assert gallery_roots({"kind": "images", "root": "/img"}, rows) == ["/data/shop/a", "/img"]
    nested = {"embeddings": ["/shards"], "sources": [{"kind": "images", "root": "/img/x"}]}
    assert gallery_roots(nested, known=["/img"]) == ["/img"]
    assert gallery_roots({"kind": "dataset", "dataset": "synthetic-patches", "root": None}) == []
    photos, gallery = tmp_path / "photos", tmp_path / "gallery"  # a gallery of links to photos
    photos.mkdir()
    gallery.mkdir()
    (gallery / "a.png").symlink_to(photos / "a.png")
    row = {"path": str(gallery / "a.png")}
    linked = gallery_roots({"kind": "images", "root": str(gallery)}, [row])
    assert linked == sorted([str(gallery.resolve()), str(photos.resolve())])


def add(client: TestClient, id_: int, path: str) -> Any:
    item = {"id": id_, "vector": [1.0] * FakeEmbedder.dim, "path": path}
    return client.post("/v1/items", json={"items": [item]}, headers=ADMIN)


def test_admin_paths_must_lie_inside_the_gallery_folders(tmp_path) -> None:
    index_dir = build_gallery(tmp_path)
    gallery = (tmp_path / "gallery").resolve()
    assert SearchIndex.load(index_dir).manifest.roots == [str(gallery)]
    secret = tmp_path / "secret.png"
    colour_image(7).save(secret)
    (gallery / "link.png").symlink_to(secret)  # inside by name, outside once resolved
    with serve(index_dir) as client:
        wait_readyz(client, 30)
        outside = [secret, gallery / "link.png", gallery / ".." / "secret.png", "../secret.png"]
        for id_, path in enumerate(outside, start=900):
            r = add(client, id_, str(path))
            assert r.status_code == 422, (path, r.text)
            assert "not inside a gallery folder" in r.json()["message"]
            assert str(gallery) in r.json()["message"]  # names the allowed folder
        assert add(client, 904, str(gallery / "5.png")).status_code == 200
        assert add(client, 905, "6.png").status_code == 200  # relative to the gallery
        for id_ in (904, 905):
            thumb = client.get(f"/v1/items/{id_}/image")
            assert thumb.status_code == 200 and thumb.content[:4] == b"\x89PNG"
        assert client.get("/v1/items/900").status_code == 404  # nothing was added


def test_thumbnails_refuse_a_path_outside_the_gallery_already_stored(tmp_path) -> None:
    index_dir = build_gallery(tmp_path)
    secret = tmp_path / "secret.png"
    colour_image(7).save(secret)
    index = SearchIndex.load(index_dir)  # as an add made before paths were confined
    index.add(np.array([7777]), np.eye(1, FakeEmbedder.dim, dtype=np.float32),
              [{"id": 7777, "path": str(secret)}])  # fmt: skip
    index.save()
    with serve(index_dir) as client:
        wait_readyz(client, 30)
        assert client.get("/v1/items/7777").json()["path"] == str(secret)
        r = client.get("/v1/items/7777/image")
        assert r.status_code == 404 and "outside the gallery folders" in r.json()["message"]
        assert client.get("/v1/items/3/image").status_code == 200  # a gallery image


def test_an_index_without_gallery_folders_needs_an_image_root_setting(tmp_path) -> None:
    source = {"kind": "dataset", "dataset": "synthetic-patches", "root": None}
    index_dir = build_gallery(tmp_path, source=source)
    with serve(index_dir) as client:  # the rows' folder is recorded: their images show
        wait_readyz(client, 30)
        assert client.get("/v1/items/1/image").status_code == 200
    extra = tmp_path / "uploads"
    extra.mkdir()
    colour_image(3).save(extra / "3.png")
    index = SearchIndex.load(index_dir)
    index.manifest.roots = []  # an index built from a data set without image files
    index.save()
    with serve(index_dir) as client:
        wait_readyz(client, 30)
        r = add(client, 900, str(extra / "3.png"))
        assert r.status_code == 422 and "records no gallery folder" in r.json()["message"]
        assert "--image-root" in r.json()["message"]
        assert client.get("/v1/items/1/image").status_code == 404  # no folder: nothing shown
    with serve(index_dir, image_roots=[extra]) as client:
        wait_readyz(client, 30)
        assert add(client, 900, str(extra / "3.png")).status_code == 200
        assert client.get("/v1/items/900/image").status_code == 200
