"""Loading the model and index once, warming them up, and reloading the index in place."""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol

import numpy as np
from fastapi import FastAPI
from PIL import Image

from coins.serve.api.deps import manifest_dict
from coins.serve.api.errors import ApiError
from coins.serve.api.observability import ServiceMetrics
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import Index, QueryEmbedder, ServiceState
from coins.serve.api.thumbnails import Thumbnails

log = logging.getLogger("coins.serve")


class Artifacts(Protocol):
    """Where the model and index come from: the ONNX file and index folder, or a test's fakes."""

    def load_model(self, settings: ServeSettings) -> QueryEmbedder: ...
    def load_index(self, settings: ServeSettings, model_sha256: str) -> Index: ...


class OnnxArtifacts:
    """The exported ONNX model (`coins export`) and the FAISS index folder (`coins index`)."""

    def load_model(self, settings: ServeSettings) -> QueryEmbedder:
        from coins.retrieval.onnx.runner import OnnxEmbedder

        embedder: QueryEmbedder = OnnxEmbedder(settings.model, threads=settings.threads)
        return embedder

    def load_index(self, settings: ServeSettings, model_sha256: str) -> Index:
        from coins.serve.index.gpu import choose_gpu, to_gpu
        from coins.serve.index.store import SearchIndex

        set_faiss_threads(settings.faiss_threads)
        index = SearchIndex.load(
            settings.index_dir, model_sha256, verify=settings.verify, mmap=settings.mmap
        )
        size = sum(f.bytes for f in index.manifest.files.values())
        if choose_gpu(settings.gpu, index.index, size, index.read_only):
            index.use_gpu(to_gpu(index.index))
        log.info("index search on %s", "GPU" if index.gpu_index is not None else "CPU")
        loaded: Index = index
        return loaded


def set_faiss_threads(threads: int) -> None:
    """OpenMP threads of FAISS calls made by this thread: the setting is per calling thread, so
    every search-pool thread sets it (unset, a 2-core box ran one query 10x slower)."""
    import faiss

    faiss.omp_set_num_threads(threads)


def warm_up(embedder: QueryEmbedder | None, index: Index) -> None:
    """One embedding and one search, so the first real request pays no lazy initialisation."""
    if embedder is not None:
        preprocess = getattr(embedder, "preprocess", None)
        size = int(getattr(preprocess, "input_size", 32))
        embedder.embed_images([Image.new("RGB", (size, size), (128, 128, 128))])
    if index.ntotal:
        xq = np.full((1, index.dim), 1 / math.sqrt(index.dim), dtype=np.float32)  # [1, D]
        index.search(xq, 1)


def load_all(app: FastAPI) -> None:
    """Load, warm up and mark ready; a failure is kept for /readyz and logged, not raised."""
    settings: ServeSettings = app.state.settings
    state: ServiceState = app.state.service
    artifacts: Artifacts = app.state.artifacts
    metrics: ServiceMetrics = app.state.metrics
    start = time.perf_counter()
    try:
        if settings.api_key is not None and settings.persist and not settings.mmap:
            state.hold_directory(settings.index_dir)  # admin writes log there: one writer
        embedder = artifacts.load_model(settings)
        index = artifacts.load_index(settings, embedder.sha256)
        warm_up(embedder, index)
    except Exception as err:  # any failure must reach /readyz instead of killing a thread
        state.error = f"{type(err).__name__}: {err}"
        log.error("loading failed: %s", state.error)
        return
    app.state.thumbnails = thumbnails_of(index, settings)
    state.set_loaded(embedder, index)
    state.ready = True
    metrics.index_size.set(index.ntotal)
    metrics.ready.set(1)
    log.info(
        "ready: %d items of dimension %d in %.1f s",
        index.ntotal,
        index.dim,
        time.perf_counter() - start,
    )


def reload_index(app: FastAPI) -> None:
    """Load the index directory again and swap it in; the old index serves until the swap.

    Holds the state's writer lock throughout: the load starts after every acknowledged admin
    write has been committed to the directory (so the new index holds them all) and no write
    commits until the swap (so none is made to the old index, or lost with it). Searches go on
    during the load. A reload always serves what the directory holds: with `persist` off, admin
    changes not saved to it are dropped, as by a restart.
    """
    settings: ServeSettings = app.state.settings
    state: ServiceState = app.state.service
    artifacts: Artifacts = app.state.artifacts
    assert state.embedder is not None
    with state.writer:
        try:
            index = artifacts.load_index(settings, state.embedder.sha256)
            warm_up(None, index)
        except Exception as err:  # a bad rebuild must not take the serving index down
            message = (
                f"reload failed, still serving the previous index: {type(err).__name__}: {err}"
            )
            raise ApiError(409, message) from err
        thumbnails = thumbnails_of(index, settings)
        state.swap_index(index)
        app.state.thumbnails = thumbnails
    app.state.metrics.index_size.set(index.ntotal)
    log.info("reloaded: %d items", index.ntotal)


def thumbnails_of(index: Index, settings: ServeSettings) -> Thumbnails:
    """The thumbnails of `index`'s items, from the gallery folders its manifest records."""
    return Thumbnails(manifest_dict(index.manifest), settings.index_dir, settings.image_roots)
