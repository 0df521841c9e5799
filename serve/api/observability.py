"""Prometheus metrics of one app: latency per route, time per stage, counts, errors, index size.

Each app owns its registry, so several apps (tests, a reload) never collide on metric names.
Under `coins serve --processes N` (PROMETHEUS_MULTIPROC_DIR set), every process writes its
samples to files there and /metrics answers the sum over all of them (`exposition`): counters
and histograms add up, `coins_ready` has one sample per live process (label `pid`) and
`coins_index_items` is the largest over live processes; a process killed without a clean exit
is dropped from both at the next scrape (`forget_dead_processes`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STAGES = ("decode", "preprocess", "embed", "search", "metadata")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "coins_http_requests",
            "Requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "coins_http_request_seconds",
            "Request latency by route.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "coins_stage_seconds",
            "Time per stage: decode, preprocess, embed, search, metadata.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "coins_http_errors", "Responses with status >= 400.", ["route", "status"], registry=r
        )
        self.queries = Counter("coins_queries", "Queries searched, by kind.", ["kind"], registry=r)
        self.images = Counter("coins_images_decoded", "Images decoded.", registry=r)
        # multiprocess_mode only matters with several processes (see the module docstring)
        self.index_size = Gauge(
            "coins_index_items", "Items in the index.", registry=r, multiprocess_mode="livemax"
        )
        self.ready = Gauge(
            "coins_ready",
            "1 when the model and index are loaded and warm.",
            registry=r,
            multiprocess_mode="liveall",
        )

        # labelled children, made once: `labels(...)` checks and locks on every call (~4 us)
        self._stages = {stage: self.stage.labels(stage) for stage in STAGES}
        self._children: dict[tuple[object, ...], Any] = {}

    def time_stage(self, stage: str) -> StageTimer:
        """`with metrics.time_stage("search"): ...` observes the block's seconds."""
        return StageTimer(self._stages[stage])

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, made once per labels."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request: its count, latency and, for status >= 400, the error."""
        code = str(status)
        self.child(self.requests, route, method, code).inc()
        self.child(self.latency, route, method).observe(seconds)
        if status >= 400:
            self.child(self.errors, route, code).inc()


class StageTimer:
    """A context manager observing its block's seconds in one stage's histogram (a class:
    contextlib's generator managers cost ~3 us each on every search)."""

    __slots__ = ("_child", "_start")

    def __init__(self, child: Any) -> None:
        self._child = child

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._child.observe(time.perf_counter() - self._start)


def multiprocess_dir() -> str | None:
    """prometheus_client's directory of per-process samples, when several processes serve."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(metrics: ServiceMetrics) -> bytes:
    """The Prometheus text of this process, or of all processes sharing multiprocess_dir()."""
    folder = multiprocess_dir()
    if folder is None:
        return generate_latest(metrics.registry)
    forget_dead_processes(folder)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)  # reads every process's files at each scrape
    return generate_latest(merged)


_LIVE_GAUGE = re.compile(r"^gauge_(?:live\w+)_(\d+)\.db$")  # prometheus_client's live modes


def forget_dead_processes(folder: str) -> list[int]:
    """Drop the live gauges (`coins_ready`, `coins_index_items`) of every process that no
    longer runs, however it died: `process_exited` runs only on a clean exit, not after a
    SIGKILL or a crash. A pid that runs but is not a sibling of this process (the workers of
    one supervisor share their parent) was reused by another program: its worker is dead too.
    Returns the pids dropped."""
    pids = {int(m.group(1)) for name in os.listdir(folder) if (m := _LIVE_GAUGE.match(name))}
    dead = sorted(pid for pid in pids if pid != os.getpid() and not _sibling_alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, folder)
    return dead


def _sibling_alive(pid: int) -> bool:
    if not Path("/proc").is_dir():  # not Linux: whether it exists is all we can tell
        return _exists(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # gone
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    state, ppid = fields[0], int(fields[1])
    return state != "Z" and ppid == os.getppid()  # a zombie is dead, awaiting its parent


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_exited() -> None:
    """Drop this process's live gauges (`coins_ready`) from the sum of several processes."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())


class RequestMetrics:
    """ASGI middleware: per-route latency and counts, and errors by status. Added outside
    `coins.serve.api.limits.BodyLimits`, so its 413s and 408s are counted too."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._observe(scope, status, time.perf_counter() - start)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        name = getattr(route, "path", None) or "unmatched"
        self.metrics.observe_request(name, scope.get("method", ""), status, seconds)
