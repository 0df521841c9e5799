"""`coins serve --processes N`: N uvicorn worker processes on one port share one read-only,
memory-mapped index (the OS page cache holds its pages once for all of them).

This module is what the supervising process runs, and it imports neither FAISS nor the model
runtime: the supervisor only binds the socket and restarts workers, so it stays small. Each
spawned worker builds its own app from the settings passed as JSON in SETTINGS_ENV
(`coins.serve.api.app:app_from_env`), loads the index with mmap and answers /readyz for itself.
Their Prometheus samples go to files in PROMETHEUS_MULTIPROC_DIR, summed by /metrics
(serve/api/observability.py). Admin writes are refused: the one writer is a separate process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from coins.serve.api.settings import ServeSettings

SETTINGS_ENV = "COINS_SERVE_SETTINGS_JSON"  # the settings, to each worker
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode


class ProcessesConfigError(ValueError):
    """Settings several server processes cannot have."""


def check_processes(settings: ServeSettings) -> None:
    """Several processes share one read-only, memory-mapped index: refuse an API key (each
    process would log writes to its own copy of the index) and require `mmap` (without it
    each process would load a private copy, N times the memory)."""
    if settings.processes == 1:
        return
    if settings.api_key is not None:
        raise ProcessesConfigError(
            f"--processes {settings.processes} serves a read-only index, but an API key enables "
            "admin writes: expected no --api-key (or COINS_API_KEY) with --processes > 1; run "
            "the index's one writer as a separate single-process server (`coins serve "
            "--api-key ...` without --processes) and these with --follow to see its commits"
        )
    if not settings.mmap:
        raise ProcessesConfigError(
            f"--processes {settings.processes} shares one index through the page cache: "
            "expected --mmap (or COINS_MMAP=1), without which each process loads its own copy"
        )


def run_processes(settings: ServeSettings, log_level: str = "info") -> None:
    """uvicorn's supervisor with `settings.processes` spawned workers on one socket, until
    interrupted. The multiprocess metrics folder is emptied at start (samples of an earlier
    run would be summed in) and removed at exit (emptied, if the operator named it)."""
    from uvicorn.supervisors import Multiprocess

    check_processes(settings)
    given = os.environ.get(MULTIPROC_ENV)
    metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="coins-metrics-"))
    metrics_dir.mkdir(parents=True, exist_ok=True)
    _empty(metrics_dir)
    # spawned workers inherit the environment: set before they start, and so before their
    # first `import prometheus_client`, which picks its value class from MULTIPROC_ENV
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    os.environ[SETTINGS_ENV] = settings.model_dump_json()  # no secret: no API key here
    config = _WorkerConfig(
        "coins.serve.api.app:app_from_env",
        factory=True,
        workers=settings.processes,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
    )
    config.header_timeout_s = settings.header_timeout_s
    try:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        if given:
            _empty(metrics_dir)
        else:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _empty(metrics_dir: Path) -> None:
    for samples in metrics_dir.glob("*.db"):
        samples.unlink()


class _WorkerConfig(uvicorn.Config):
    """uvicorn's configuration, pickled to each spawned worker. The header-deadline protocol
    (`coins.serve.api.app`) is a class made in a function, which pickle cannot send: each
    worker makes it in `load`, which runs there (the supervisor only binds the socket)."""

    header_timeout_s: float = 10.0

    def load(self) -> None:
        from coins.serve.api.app import http_protocol

        self.http = http_protocol(self.header_timeout_s)
        super().load()
