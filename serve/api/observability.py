"""Prometheus metrics of one app: latency per route, time per stage, counts, errors, index size.

Each app owns its registry, so several apps (tests, a reload) never collide on metric names.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coins.serve.api.errors import error_response

STAGES = ("decode", "preprocess", "embed", "search", "metadata")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
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
        self.index_size = Gauge("coins_index_items", "Items in the index.", registry=r)
        self.ready = Gauge(
            "coins_ready", "1 when the model and index are loaded and warm.", registry=r
        )

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        assert stage in STAGES, stage
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - start)


class BodyTooLarge(HTTPException):
    """413. An HTTPException, so that FastAPI passes it on from its form and JSON parsing, which
    turn any other error raised while reading a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit:,} bytes")


class BodyTimeout(HTTPException):
    """408: the client was too slow sending the body (an HTTPException for the same reason)."""

    def __init__(self, why: str) -> None:
        super().__init__(408, f"request body: {why}")


class RequestMetrics:
    """ASGI middleware: per-route latency and counts, and the limits on reading a request body:
    `max_body` bytes (413), `idle_timeout` seconds between two chunks and `total_timeout`
    seconds from the request's arrival to the body's end (408)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body: int,
        idle_timeout: float = math.inf,
        total_timeout: float = math.inf,
    ) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body
        self.idle_timeout, self.total_timeout = idle_timeout, total_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, received = time.perf_counter(), 500, 0
        started = body_done = False
        deadline = time.monotonic() + self.total_timeout

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later calls wait for a disconnect: no time limit on those
                return await receive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BodyTimeout(f"not received within {self.total_timeout:g} s")
            try:
                message = await asyncio.wait_for(receive(), min(self.idle_timeout, left))
            except TimeoutError:
                if left > self.idle_timeout:
                    raise BodyTimeout(f"no data for {self.idle_timeout:g} s") from None
                raise BodyTimeout(f"not received within {self.total_timeout:g} s") from None
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge(self.max_body)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            if self._declared_length(scope) > self.max_body:
                raise BodyTooLarge(self.max_body)
            await self.app(scope, limited_receive, send_status)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside the routes' error handlers
            if started:
                raise
            await error_response(exc.status_code, exc.detail)(scope, receive, send_status)
        finally:
            self._observe(scope, status, time.perf_counter() - start)

    @staticmethod
    def _declared_length(scope: Scope) -> int:
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        name = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(name, method, str(status)).inc()
        self.metrics.latency.labels(name, method).observe(seconds)
        if status >= 400:
            self.metrics.errors.labels(name, str(status)).inc()
