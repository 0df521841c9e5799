"""How the search service is configured: flags of `coins serve`, or `COINS_*` environment variables.

Every limit the API enforces lives here, so an operator reads them in one place and tests can
shrink them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from coins.serve.api.schemas import MAX_BATCH

# one number of a query vector as JSON: the longest float repr is 24 bytes
# ("-2.2250738585072014e-308"), then ", " and a little room for indentation
JSON_NUMBER_BYTES = 32
FILTER_BYTES = 2**20  # room in a search body beyond the query vectors: a filter of ~50,000 ids
ITEM_BYTES = 4096  # room per added item beyond its vector: id, path, labels, extra metadata


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class ServeSettings(BaseSettings):
    """Settings of one server; `COINS_INDEX_DIR=... COINS_MODEL=... coins serve` works too."""

    model_config = SettingsConfigDict(env_prefix="COINS_", extra="forbid")

    index_dir: Path  # built by `coins index`
    model: Path  # exported by `coins export`; its sha256 must match the index manifest
    host: str = "127.0.0.1"  # loopback unless asked: the admin routes trust the network less
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = None  # enables the admin routes (items, reload) and guards them
    report_dir: Path | None = None  # a `coins report` folder, linked from the web page
    workers: int = Field(default_factory=_cores, ge=1)  # search/embed thread pool
    threads: int = Field(default_factory=_cores, ge=1)  # ONNX Runtime intra-op threads
    faiss_threads: int = Field(default=1, ge=1)  # per search call; the pool gives parallelism
    # an unfiltered vector search expected to take under this many ms of CPU (judged from the
    # last ones; a 1M-vector IVF search with its metadata takes ~0.3 ms, up to ~1 ms on a busy
    # machine), with a body under 64 KiB, is answered on the event loop: the hop to the pool
    # and back costs more than such a search. 0: every search in the pool
    inline_search_ms: float = Field(default=2.0, ge=0)
    max_k: int = Field(default=1000, ge=1)
    max_vectors: int = Field(default=1024, ge=1)  # query vectors or ids per request
    max_images: int = Field(default=32, ge=1)  # images per request
    max_image_bytes: int = Field(default=10 * 2**20, ge=1)  # one uploaded file
    max_request_bytes: int = Field(default=64 * 2**20, ge=1)  # a whole request body
    max_image_pixels: int = Field(default=40_000_000, ge=1)  # decompression-bomb limit
    # longest side / shortest side of an uploaded image, read from the header before decoding;
    # beyond it the model's centre crop would see under 1/32 of the image: refused with a 422
    max_image_aspect: float = Field(default=32.0, ge=1)
    # time limits on reading a request (408 past them): uvicorn has none for the body, so a
    # client sending one byte a minute would hold its request (and bytes so far) for hours
    body_idle_timeout_s: float = Field(default=15.0, gt=0)  # between two chunks of a body
    body_timeout_s: float = Field(default=120.0, gt=0)  # a whole body (64 MiB at ~5 Mbit/s)
    # the request line and headers, from connection open or from the end of the last response
    # (uvicorn's h11 server has no such limit: an idle or dribbling connection stays forever)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_timeout_s: int = Field(default=5, ge=1)  # idle keep-alive connection, uvicorn's
    # uvicorn's limit_concurrency: beyond this many connections or tasks, requests get 503; open
    # connections count, idle or not, so it caps load rather than stopping a flood of sockets
    max_connections: int | None = Field(default=None, ge=1)
    max_items_add: int = Field(default=10_000, ge=1)  # items per admin add
    # gate=coarse searches only the predicted coarse classes when they hold at least this
    # probability together, else every class (the answer's `gate` says which); the default
    # is measured: docs/benchmarks.md, "the coarse gate's threshold"
    gate_min_prob: float = Field(default=0.5, ge=0, le=1)
    persist: bool = True  # log each admin add or delete (fsynced) before acknowledging it
    # the write-ahead log is folded into a new index generation, in the background, once it
    # holds this many records or bytes (`coins index compact DIR` does it offline)
    compact_after_records: int = Field(default=10_000, ge=1)
    compact_after_bytes: int = Field(default=256 * 2**20, ge=1)
    # folders whose image files admin adds may name and thumbnails may show, besides the gallery
    # folders the index manifest records (`roots`); an index built from a data set without image
    # files records none, and then admin adds with a `path` are refused (422) unless given here
    # (`--image-root DIR`, repeatable, or COINS_IMAGE_ROOTS='["/srv/new-items"]')
    image_roots: list[Path] = Field(default_factory=list)
    # index loading: `mmap` maps the FAISS file (opens a 10M-item index in seconds; the index
    # is then read-only: admin adds and deletes get 4xx); `verify` "fast" checks sizes and the
    # ends of each file, "full" hashes every byte; `gpu` "auto" searches on a GPU when FAISS
    # sees one and the index fits, "on" requires it, "off" never
    mmap: bool = False
    verify: Literal["fast", "full"] = "fast"
    gpu: Literal["auto", "on", "off"] = "auto"
    # a read-only replica: poll index.json every `follow_interval_s` and swap in each new
    # generation the directory's one writer commits (serve/api/generations.py); no API key
    follow: bool = False
    follow_interval_s: float = Field(default=1.0, gt=0)
    # server processes on one port (uvicorn workers), each mapping the same index read-only:
    # more than 1 requires `mmap` and refuses an API key (the writer is one separate process)
    processes: int = Field(default=1, ge=1)

    def max_search_bytes(self, dim: int) -> int:
        """Bytes a /v1/search body may have, checked before it is parsed: `max_vectors` vectors
        of `dim` numbers at JSON_NUMBER_BYTES each, plus FILTER_BYTES for k, a filter and
        whitespace, and never more than `max_request_bytes`. Parsing JSON costs ~30x its size
        in Python objects: a body is refused by its size (413) before that, not after."""
        vectors = self.max_vectors * (dim * JSON_NUMBER_BYTES + 2)
        return min(self.max_request_bytes, vectors + FILTER_BYTES)

    def max_add_bytes(self, dim: int) -> int:
        """Bytes a POST /v1/items body may have, checked before it is parsed: `max_items_add`
        items of `dim` numbers and ITEM_BYTES of metadata each, at most `max_request_bytes`."""
        items = self.max_items_add * (dim * JSON_NUMBER_BYTES + ITEM_BYTES)
        return min(self.max_request_bytes, items)

    def max_delete_bytes(self) -> int:
        """Bytes a DELETE /v1/items body may have: MAX_BATCH ids of JSON_NUMBER_BYTES each."""
        return min(self.max_request_bytes, MAX_BATCH * JSON_NUMBER_BYTES + 1024)
