"""In-memory stand-ins of OnnxEmbedder and SearchIndex with the same methods, for API tests that
must not depend on a trained model: an exact numpy search is the reference."""

# ruff: noqa: E741  (FAISS names its results D and I)

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from coins.retrieval.data import Preprocess
from coins.serve.api.settings import ServeSettings
from coins.serve.index.fields import Schema, infer_schema
from coins.serve.index.filters import Filter, FilterError, compile_filter, parse_filter
from coins.serve.index.metadata import MetadataStore

DIM = 8
COARSE = ["tops", "shoes", "bags"]


@dataclass
class FakeResult:
    vectors: np.ndarray
    coarse_probs: np.ndarray | None


class FakeEmbedder:
    """Mean colour of a 4x4 thumbnail, projected to DIM; coarse head = a fixed linear map."""

    sha256 = "f" * 64
    dim = DIM
    preprocess = Preprocess(input_size=4)

    def __init__(self, coarse: bool = True) -> None:
        rng = np.random.default_rng(0)
        self.proj = rng.standard_normal((48, DIM)).astype(np.float32)
        self.head = rng.standard_normal((DIM, len(COARSE))).astype(np.float32)
        self.coarse_classes = list(COARSE) if coarse else None

    def to_array(self, image: Image.Image) -> np.ndarray:
        small = image.convert("RGB").resize((4, 4))
        return (np.asarray(small, np.float32) / 255).transpose(2, 0, 1)  # [3, 4, 4]

    def embed_arrays(self, x: np.ndarray) -> FakeResult:
        v = x.reshape(len(x), -1) @ self.proj + 1e-3  # [N, D]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        logits = v @ self.head
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return FakeResult(
            v.astype(np.float32), probs.astype(np.float32) if self.coarse_classes else None
        )

    def embed_images(self, images: Sequence[Image.Image]) -> FakeResult:
        return self.embed_arrays(np.stack([self.to_array(i) for i in images]))


class FakeIndex:
    """Exact inner-product search over a dict of items; filters run over a fresh in-memory
    copy of the rows in SQLite (the metadata store's table), with the rows' inferred schema."""

    def __init__(self, ids: np.ndarray, xb: np.ndarray, rows: list[dict[str, Any]]) -> None:
        self.dim = xb.shape[1]
        self.vectors = {int(i): v for i, v in zip(ids, xb, strict=True)}
        self.rows = {int(r["id"]): dict(r) for r in rows}
        fields = dict(infer_schema(rows).fields)
        self.manifest: dict[str, Any] = {
            "dim": self.dim,
            "index_key": "fake",
            "source": {},
            "fields": fields,
        }
        self.log = FakeLog()

    def select(self, filter: Filter | dict[str, Any] | str | None) -> np.ndarray:
        """Ids (ascending) the filter keeps; FilterError as the real index raises it."""
        where = compile_filter(
            parse_filter(filter) or Filter(), Schema(self.manifest["fields"]), self._class_name
        )
        store = MetadataStore(Path(":memory:"), create=True)
        try:
            store.insert([self.rows[i] for i in sorted(self.rows)])
            return store.ids_matching(where)
        finally:
            store.close()

    def _class_name(self, level: str, number: int) -> str:
        names = self.manifest.get("classes", {}).get(level) or []  # none, unless a test sets them
        if not 0 <= number < len(names):
            raise FilterError(
                f"filter: {level} class {number} out of range: the index has {len(names)}"
            )
        return str(names[number])

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def search(
        self,
        xq: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        filter: Filter | dict[str, Any] | None = None,
    ):
        ids = np.array(sorted(self.vectors), dtype=np.int64)
        if allowed_ids is not None:
            ids = ids[np.isin(ids, allowed_ids)]
        if filter is not None:
            ids = ids[np.isin(ids, self.select(filter))]
        xb = np.stack([self.vectors[int(i)] for i in ids]) if len(ids) else np.zeros((0, self.dim))
        S = xq @ xb.T  # [nq, n]
        D = np.full((len(xq), k), -np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)
        for q in range(len(xq)):
            order = sorted(range(len(ids)), key=lambda j: (-S[q, j], ids[j]))[:k]
            D[q, : len(order)] = S[q, order]
            I[q, : len(order)] = ids[order]
        return D, I

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.vectors[int(i)] for i in ids])

    def metadata(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        return [self.rows.get(int(i)) for i in ids]

    def metadata_json(self, ids: np.ndarray) -> list[str | None]:
        from coins.serve.api.search import metadata_dict

        rows = zip(ids, self.metadata(ids), strict=True)
        return [None if r is None else json.dumps(metadata_dict(int(i), r)) for i, r in rows]

    def ids_where(self, coarse: str | None = None, fine: str | None = None) -> np.ndarray:
        keep = [
            i
            for i, r in self.rows.items()
            if (coarse is None or r.get("coarse") == coarse)
            and (fine is None or r.get("fine") == fine)
        ]
        return np.array(sorted(keep), dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
        for i, v, r in zip(ids, vectors, rows, strict=True):
            self.vectors[int(i)] = v
            self.rows[int(i)] = {
                k: (str(x) if k in ("coarse", "fine") and x is not None else x)
                for k, x in r.items()
            }

    def remove(self, ids: np.ndarray) -> int:
        for i in ids:
            self.vectors.pop(int(i), None)
            self.rows.pop(int(i), None)
        return len(ids)


class FakeLog:
    """Counts the changes an admin route logs before applying them."""

    def __init__(self) -> None:
        self.records = 0

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
        self.records += 1

    def remove(self, ids: np.ndarray) -> None:
        self.records += 1

    def needs_compaction(self, max_records: int, max_bytes: int) -> bool:
        return False


def colour_image(i: int, size: int = 12) -> Image.Image:
    """A distinct solid-colour image per i."""
    rng = np.random.default_rng(i)
    return Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))


def fake_gallery(
    n: int = 30, embedder: FakeEmbedder | None = None, image_dir: Path | None = None
) -> FakeIndex:
    """Items 100..100+n-1 of solid colours; with `image_dir`, their images are files there."""
    embedder = embedder or FakeEmbedder()
    images = [colour_image(i) for i in range(n)]
    xb = embedder.embed_images(images).vectors
    ids = np.arange(100, 100 + n, dtype=np.int64)
    paths: list[str | None] = [None] * n
    if image_dir is not None:
        for j, img in enumerate(images):
            img.save(image_dir / f"{j}.png")
            paths[j] = str(image_dir / f"{j}.png")
    rows = [
        {"id": int(i), "path": paths[j], "coarse": COARSE[j % 3], "fine": str(j % 6), "colour": j}
        for j, i in enumerate(ids)
    ]
    index = FakeIndex(ids, xb, rows)
    if image_dir is not None:  # the gallery folder, as `coins index` records it
        index.manifest["roots"] = [str(image_dir)]
    return index


class FakeArtifacts:
    """The Artifacts of create_app, giving the fakes (a reload gives `next_index` if set)."""

    def __init__(self, coarse: bool = True, n: int = 30, image_dir: Path | None = None) -> None:
        self.embedder = FakeEmbedder(coarse)
        self.index = fake_gallery(n, self.embedder, image_dir)
        self.next_index: FakeIndex | Exception | None = None

    def load_model(self, settings: ServeSettings) -> FakeEmbedder:
        return self.embedder

    def load_index(self, settings: ServeSettings, model_sha256: str) -> FakeIndex:
        if isinstance(self.next_index, Exception):
            raise self.next_index
        if self.next_index is not None:
            self.index = self.next_index
        return self.index


def wait_readyz(client: Any, timeout: float = 10, loaded_only: bool = False) -> Any:
    """Poll /readyz until it answers 200 (with `loaded_only`, until loading has ended, also in
    failure); return its last answer. Fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        if (r.json()["status"] != "loading") if loaded_only else r.status_code == 200:
            return r
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.02)
