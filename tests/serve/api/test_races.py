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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEmbedder, colour_image, wait_readyz

from coins.serve.api.app import create_app
from coins.serve.api.loading import OnnxArtifacts
from coins.serve.api.settings import ServeSettings
from coins.serve.index.build import build_index
from coins.serve.index.manifest import gallery_roots
from coins.serve.index.store import STALE_TMP_SECONDS, SearchIndex

KEY = "r4ce"
ADMIN = {"X-API-Key": KEY}
GALLERY = 200  # items of the test index, ids 0..199, images gallery/<id>.png


# ---- the race ------------------------------------------------------------------------------


@dataclass
class RaceCounts:
    """What a race sent and what went wrong; `ok` when nothing did."""

    adds: int = 0  # acknowledged (200)
    deletes: int = 0
    reloads: int = 0
    searches: int = 0  # reads of any kind by the searching clients
    server_errors: list[str] = field(default_factory=list)  # 5xx or no answer
    refused: list[str] = field(default_factory=list)  # a 4xx where the request was valid
    lost_adds: list[int] = field(default_factory=list)  # acknowledged, then not found
    kept_deletes: list[int] = field(default_factory=list)  # acknowledged, then still found
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.refused or self.lost_adds or self.kept_deletes)

    def summary(self) -> str:
        return (
            f"{self.adds} adds, {self.deletes} deletes, {self.reloads} reloads, "
            f"{self.searches} searches in {self.seconds:.1f} s: "
            f"{len(self.server_errors)} 5xx, {len(self.refused)} refused, "
            f"{len(self.lost_adds)} acknowledged adds not found, "
            f"{len(self.kept_deletes)} acknowledged deletes still found"
        )


def race(
    client: Any,
    *,
    adds: int,
    reloads: int,
    deletes: int,
    searchers: int,
    gallery_ids: list[int],
    dim: int,
    image_path: Callable[[int], str | None] = lambda i: None,
    seed: int = 0,
    headers: dict[str, str] = ADMIN,
) -> RaceCounts:
    """Adds (new ids from 10**6, two threads), deletes (of `gallery_ids`, one thread) and
    reloads (two threads) at once, while `searchers` threads search, list and fetch items until
    the writers are done. Each add is looked up (GET and search by id) right after its 200, each
    delete likewise; at the end, one more reload, and every acknowledged change is checked again.
    Threads pause at random (seeded) so the interleavings differ from run to run of a seed."""
    counts = RaceCounts()
    guard = threading.Lock()
    done = threading.Event()
    added: list[int] = []
    deleted: list[int] = []

    def send(method: str, url: str, **kwargs: Any) -> Any:
        try:
            r = client.request(method, url, **kwargs)
        except Exception as err:  # a dropped connection counts as a server failure
            with guard:
                counts.server_errors.append(f"{method} {url}: {type(err).__name__}: {err}")
            return None
        if r.status_code >= 500:
            with guard:
                counts.server_errors.append(f"{method} {url} {r.status_code}: {r.text[:200]}")
        return r

    def expect(r: Any, method: str, url: str, status: int = 200) -> bool:
        if r is None or r.status_code >= 500:
            return False
        if r.status_code != status:
            with guard:
                counts.refused.append(f"{method} {url} {r.status_code}: {r.text[:200]}")
            return False
        return True

    def findable(id_: int) -> bool:
        """GET and search by id both find the item (a 404 from either: not found)."""
        got = send("GET", f"/v1/items/{id_}")
        hit = send("POST", "/v1/search", json={"ids": [id_], "k": 1})
        return all(r is not None and r.status_code == 200 for r in (got, hit))

    def gone(id_: int) -> bool:
        got = send("GET", f"/v1/items/{id_}")
        hit = send("POST", "/v1/search", json={"ids": [id_], "k": 1})
        return all(r is not None and r.status_code == 404 for r in (got, hit))

    def pause(rng: np.random.Generator) -> None:
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0, 0.003))

    def adder(worker: int, ids: list[int]) -> None:
        rng = np.random.default_rng([seed, 1, worker])
        for id_ in ids:
            pause(rng)
            v = rng.standard_normal(dim)
            item = {"id": id_, "vector": v.tolist(), "coarse": "new", "path": image_path(id_)}
            r = send("POST", "/v1/items", json={"items": [item]}, headers=headers)
            if not expect(r, "POST", "/v1/items"):
                continue
            with guard:
                counts.adds += 1
                added.append(id_)
            if not findable(id_):
                with guard:
                    counts.lost_adds.append(id_)

    def deleter(ids: list[int]) -> None:
        rng = np.random.default_rng([seed, 2])
        for id_ in ids:
            pause(rng)
            r = send("DELETE", "/v1/items", json={"ids": [id_]}, headers=headers)
            if not expect(r, "DELETE", "/v1/items"):
                continue
            if r.json()["removed"] != 1:
                with guard:
                    counts.refused.append(f"DELETE {id_}: {r.text[:200]}")
                continue
            with guard:
                counts.deletes += 1
                deleted.append(id_)
            if not gone(id_):
                with guard:
                    counts.kept_deletes.append(id_)

    def reloader(worker: int, n: int) -> None:
        rng = np.random.default_rng([seed, 3, worker])
        for _ in range(n):
            pause(rng)
            if expect(send("POST", "/v1/reload", headers=headers), "POST", "/v1/reload"):
                with guard:
                    counts.reloads += 1

    def searcher(worker: int) -> None:
        rng = np.random.default_rng([seed, 4, worker])
        while not done.is_set():
            pick, id_ = rng.integers(4), int(rng.choice(gallery_ids))
            if pick == 0:
                send("POST", "/v1/search", json={"vectors": [rng.standard_normal(dim).tolist()]})
            elif pick == 1:
                send("POST", "/v1/search", json={"ids": [id_], "k": 5})  # 404 once deleted
            elif pick == 2:
                send("GET", "/v1/items", params={"offset": int(rng.integers(50)), "limit": 20})
            else:
                send("GET", f"/v1/items/{id_}/image", params={"size": 16})
            with guard:
                counts.searches += 1

    rng = np.random.default_rng(seed)
    new_ids = [10**6 + i for i in range(adds)]
    victims = [int(i) for i in rng.choice(gallery_ids, size=deletes, replace=False)]
    writers = [
        threading.Thread(target=adder, args=(0, new_ids[0::2])),
        threading.Thread(target=adder, args=(1, new_ids[1::2])),
        threading.Thread(target=deleter, args=(victims,)),
        threading.Thread(target=reloader, args=(0, reloads - reloads // 2)),
        threading.Thread(target=reloader, args=(1, reloads // 2)),
    ]
    readers = [threading.Thread(target=searcher, args=(w,)) for w in range(searchers)]
    start = time.perf_counter()
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    counts.seconds = time.perf_counter() - start
    # after the dust settles: one more reload, then every acknowledged change, from the disk
    expect(send("POST", "/v1/reload", headers=headers), "POST", "/v1/reload")
    counts.lost_adds += [i for i in added if not findable(i) and i not in counts.lost_adds]
    counts.kept_deletes += [i for i in deleted if not gone(i) and i not in counts.kept_deletes]
    return counts


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
