"""How the search service is configured: flags of `coins serve`, or `COINS_*` environment variables.

Every limit the API enforces lives here, so an operator reads them in one place and tests can
shrink them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_k: int = Field(default=1000, ge=1)
    max_vectors: int = Field(default=1024, ge=1)  # query vectors or ids per request
    max_images: int = Field(default=32, ge=1)  # images per request
    max_image_bytes: int = Field(default=10 * 2**20, ge=1)  # one uploaded file
    max_request_bytes: int = Field(default=64 * 2**20, ge=1)  # a whole request body
    max_image_pixels: int = Field(default=40_000_000, ge=1)  # decompression-bomb limit
    max_items_add: int = Field(default=10_000, ge=1)  # items per admin add
    persist: bool = True  # save the index after an admin add or delete
