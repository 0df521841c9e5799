"""The search service: `create_app(settings)` wires routes, errors, metrics and the lifespan.

Nothing heavy happens at import or in the factory. The lifespan starts a thread that loads the
model and index and warms them up; until it is done /readyz answers 503 and so do the search
routes, while /healthz already answers 200.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from coins import __version__
from coins.serve.api.errors import add_body_schemas, install_error_handlers
from coins.serve.api.generations import GenerationFollower, check_follower
from coins.serve.api.limits import BodyLimits
from coins.serve.api.loading import Artifacts, OnnxArtifacts, load_all, set_faiss_threads
from coins.serve.api.observability import RequestMetrics, ServiceMetrics, process_exited
from coins.serve.api.routes import admin as routes_admin
from coins.serve.api.routes import items as routes_items
from coins.serve.api.routes import ops as routes_ops
from coins.serve.api.routes import search as routes_search
from coins.serve.api.search import SearchCost
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import ServiceState

if TYPE_CHECKING:
    import uvicorn

STATIC = Path(str(resources.files("coins.serve.api") / "static"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A search pool of `workers` threads, and the model and index loaded in the background."""
    settings: ServeSettings = app.state.settings
    app.state.pool = ThreadPoolExecutor(
        settings.workers,
        thread_name_prefix="coins-search",
        initializer=set_faiss_threads,
        initargs=(settings.faiss_threads,),
    )
    # FAISS's OpenMP thread count is per calling thread: the loop's own, for the searches
    # answered there without the hop to the pool (inline_search_ms), as the pool's
    set_faiss_threads(settings.faiss_threads)
    loading = asyncio.create_task(asyncio.to_thread(load_all, app))
    if getattr(app.state, "freeze_gc", False):
        # what is loaded lives as long as the process: the collector's full passes, which
        # walk every tracked object, skip it once frozen (~10 % of a search's CPU before)
        loading.add_done_callback(lambda _: gc.freeze())
    follower = GenerationFollower(app) if settings.follow else None
    if follower is not None:
        follower.start()  # polls once loaded: new generations of index_dir are swapped in
    try:
        yield
    finally:
        if follower is not None:
            await asyncio.to_thread(follower.stop)  # a reload in progress ends first
        if not loading.done():
            await asyncio.wait([loading], timeout=5)
        app.state.pool.shutdown(wait=True, cancel_futures=True)
        app.state.service.close()  # the index directory's writer lock
        process_exited()


class CoinsAPI(FastAPI):
    """FastAPI, with POST /v1/search answered first (routes/search.py `SearchEndpoint`): the
    hot path skips the middleware stack, whose work for it (body limits, errors, metrics)
    `SearchEndpoint` does itself. A middleware added to the app later does not see this
    route: add what it must do to `SearchEndpoint` too."""

    search_endpoint: routes_search.SearchEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.search_endpoint
        if (
            endpoint is not None
            and scope["type"] == "http"
            and scope["path"] == endpoint.PATH
            and scope["method"] == "POST"
        ):
            await endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: ServeSettings, artifacts: Artifacts | None = None) -> CoinsAPI:
    """The FastAPI app of one index and one model; `artifacts` replaces the loader in tests."""
    app = CoinsAPI(
        title="coins search",
        version=__version__,
        description="Fine-grained nearest-neighbour search over CoIns embeddings.",
        lifespan=lifespan,
        # Starlette's slash redirect builds an absolute URL from the Host header: a request
        # with `Host: evil` would be sent to http://evil/...; a wrong path is a 404 instead
        redirect_slashes=False,
    )
    check_follower(settings)
    app.state.settings = settings
    app.state.artifacts = artifacts or OnnxArtifacts()
    app.state.service = ServiceState()
    app.state.metrics = ServiceMetrics()
    app.state.search_cost = SearchCost()
    app.state.thumbnails = None
    install_error_handlers(app)
    for module in (routes_ops, routes_search, routes_items, routes_admin):
        app.include_router(module.router)
    _mount_page(app, settings)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.search_endpoint = routes_search.SearchEndpoint(app)
    app.add_middleware(  # the last added runs first
        BodyLimits,
        max_body=settings.max_request_bytes,
        idle_timeout=settings.body_idle_timeout_s,
        total_timeout=settings.body_timeout_s,
    )
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the bodies that routes parse themselves (`json_body_schema`)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        app.openapi_schema = add_body_schemas(schema)
    return app.openapi_schema


def _mount_page(app: FastAPI, settings: ServeSettings) -> None:
    """The web page at /, its assets at /static, and the model's report at /report when given."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.report_dir is not None:
        app.mount("/report", StaticFiles(directory=settings.report_dir, html=True), name="report")


def run(settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until interrupted (what `coins serve` does); `settings.processes` worker
    processes share the port when more than one."""
    import uvicorn

    if settings.processes > 1:
        from coins.serve.api.processes import run_processes

        run_processes(settings, log_level)
        return
    uvicorn.Server(server_config(serving_app(settings), settings, log_level)).run()


def serving_app(settings: ServeSettings) -> FastAPI:
    """The app of a serving process, which freezes what it loaded out of the garbage
    collector's reach (apps made in tests do not: many share one process there)."""
    app = create_app(settings)
    app.state.freeze_gc = True
    return app


def server_config(app: FastAPI, settings: ServeSettings, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's configuration of `app`: address, and the connection limits of `settings`."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        http=http_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
    )


def app_from_env() -> FastAPI:
    """The app of one worker process of `coins serve --processes N` (uvicorn's factory):
    the settings come as JSON in SETTINGS_ENV, written by the parent process."""
    from coins.serve.api.processes import SETTINGS_ENV

    settings = ServeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    return serving_app(settings)


MAX_HEAD_BYTES = 64 * 2**10  # a request line and headers; h11's own bound is 16 KiB


def http_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a deadline for each request's line and headers
    (`with_header_deadline`): on httptools (a C parser) when installed, else on h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return with_header_deadline(H11Protocol, seconds)
    return with_header_deadline(HttpToolsProtocol, seconds)


def with_header_deadline(base: type[Any], seconds: float) -> type[asyncio.Protocol]:
    """`base` (uvicorn's h11 or httptools protocol) closing a connection whose request line
    and headers have not arrived `seconds` after it opened or after the previous response, or
    pass MAX_HEAD_BYTES. uvicorn has neither bound: a client sending nothing, or a byte now and
    then, would hold a socket for ever, and httptools keeps a header of any length."""

    class HeaderDeadline(base):
        _deadline: asyncio.TimerHandle | None = None
        _waiting: Any = None  # the cycle (request) before the awaited one
        _head_bytes = 0  # received while awaiting a request's line and headers

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self.transport = CoalescedWrites(transport, self.loop)  # what cycles write to
            self._arm(None)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting():  # every byte of `data` belongs to an unfinished head
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                    self.transport.close()

        def on_response_complete(self) -> None:
            finished = self.cycle  # handling pipelined requests may start a new cycle
            super().on_response_complete()
            self._arm(finished)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _awaiting(self) -> bool:
            """No request since the deadline was armed (h11 and httptools start a cycle once
            a request's headers are in), and none in progress."""
            cycle: Any = self.cycle
            return cycle is self._waiting and (cycle is None or cycle.response_complete)

        def _arm(self, waiting: object) -> None:
            """Close unless a new request (a new cycle) has started by the deadline."""
            if self._deadline is not None:
                self._deadline.cancel()
            self._waiting, self._head_bytes = waiting, 0

            def expire() -> None:
                if self._awaiting() and not self.transport.is_closing():
                    self.transport.close()

            self._deadline = self.loop.call_later(seconds, expire)

    return HeaderDeadline


class CoalescedWrites:
    """A transport whose writes made in one turn of the event loop go out as one: uvicorn
    writes a response's status line and headers, then its body, each at once (two send
    calls, two packets). The rest is the transport's own; `close` sends what is pending."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
