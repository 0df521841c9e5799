"""Search routes: by vectors or stored ids, by uploaded images (optionally gated by the predicted
coarse class), and images to vectors."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from coins.serve.api.deps import (
    MetricsDep,
    ReadyDep,
    SettingsDep,
    in_pool,
    loaded,
    ready_state,
    run_in_pool,
)
from coins.serve.api.errors import (
    ApiError,
    error_response,
    json_body_schema,
    parse_json_field,
    validation_response,
)
from coins.serve.api.limits import BodyTooLarge, declared_length, read_body, receive_body
from coins.serve.api.observability import ServiceMetrics
from coins.serve.api.schemas import (
    MAX_K,
    EmbedResponse,
    Filter,
    QueryResult,
    SearchRequest,
    SearchResponse,
    error_responses,
)
from coins.serve.api.search import (
    SearchCost,
    allowed_ids,
    coarse_guesses,
    gated_search,
    knn,
    neighbor_rows,
    normalise,
    stored_vectors,
)
from coins.serve.api.search_body import SearchQuery, parse_search
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import ServiceState
from coins.serve.api.uploads import ImagesForm, Payload, embed_uploads, read_images

router = APIRouter(
    prefix="/v1", tags=["search"], responses=error_responses(400, 404, 408, 413, 415, 422, 503)
)

log = logging.getLogger("coins.serve")
COARSE_SHOWN = 3  # predicted coarse classes returned per image query
INLINE_BYTES = 64 * 2**10  # search bodies parsed on the event loop (~0.2 ms); larger: the pool
_FILTER = TypeAdapter(Filter)


def _check_k(k: int, settings: ServeSettings) -> None:
    if k > settings.max_k:
        raise ApiError(422, f"k={k} is more than this server's limit of {settings.max_k}")


@router.post(
    "/search", response_model=SearchResponse, openapi_extra=json_body_schema(SearchRequest)
)
async def search(request: Request) -> Response:
    """Nearest neighbours of query vectors, or of stored items by id (never the item itself).

    A small body is parsed on the event loop and, when its search is expected to take under
    `inline_search_ms`, answered there too: a thread hop would cost more than the search. A
    larger one (a batch: thousands of floats) is parsed and answered in the search pool.
    A served app answers this route before its middleware (`SearchEndpoint`), with this same
    code; the route is its OpenAPI document, and what answers in an app without it."""

    async def body(limit: int, what: str) -> bytes:
        return await read_body(request, limit, what)

    return Response(await answer(request.app, body), media_type="application/json")


BodyReader = Callable[[int, str], Awaitable[bytes]]  # (limit, what it is for) -> the body


async def answer(app: FastAPI, read: BodyReader) -> bytes:
    """The JSON answer of a POST /v1/search whose body `read` gives; ApiError or
    RequestValidationError if refused."""
    start = time.perf_counter()
    state: ServiceState = app.state.service  # no dependencies: each costs a resolution
    settings: ServeSettings = app.state.settings
    metrics: ServiceMetrics = app.state.metrics
    ready_state(state)
    _, index = loaded(state)
    what = f"a search ({settings.max_vectors} query vectors of dimension {index.dim}, a filter)"
    raw = await read(settings.max_search_bytes(index.dim), what)
    pool = app.state.pool
    if len(raw) > INLINE_BYTES:
        return await run_in_pool(pool, _search_json, state, metrics, settings, raw, start)
    query = _parse(raw, index.dim, settings)
    cost: SearchCost = app.state.search_cost
    if query.ids is None and query.filter is None and cost.fits(query.nq, settings, state):
        return _answer(state, metrics, cost, query, start)
    return await run_in_pool(pool, _answer, state, metrics, cost, query, start)


class SearchEndpoint:
    """POST /v1/search answered before the app's middleware stack (`CoinsAPI` calls it
    first): Starlette's error middleware, FastAPI's telemetry and body-limit wrappers, our
    metrics and body limits, the router and its handler each wrap `send` and cost a few
    microseconds, ~15 % of a search together (py-spy, 2026-12-07). Here the same
    things are done once, inline: the body limits of `BodyLimits` and `read_body` (413, 408),
    the route's `answer`, errors as the app's handlers write them (an unexpected one is a
    logged 500), and the request's count and latency in the metrics, labelled as the route."""

    PATH = "/v1/search"

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        settings: ServeSettings = self.app.state.settings
        status = 500
        try:
            declared = declared_length(scope)
            if declared > settings.max_request_bytes:
                raise BodyTooLarge(settings.max_request_bytes)
            deadline = time.monotonic() + settings.body_timeout_s

            async def body(limit: int, what: str) -> bytes:
                return await receive_body(
                    receive, declared, limit, what, settings.body_idle_timeout_s, deadline,
                    settings.body_timeout_s,
                )  # fmt: skip

            payload = await answer(self.app, body)
            status = 200
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
        except ClientDisconnect:
            pass  # nobody to answer (counted as a 500, as the middleware counts it)
        except Exception as exc:
            response = _error_response(exc, scope)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self.app.state.metrics.observe_request(
                self.PATH, "POST", status, time.perf_counter() - start
            )


def _error_response(exc: Exception, scope: Scope) -> Response:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message)
    if isinstance(exc, RequestValidationError):
        return validation_response(exc)
    if isinstance(exc, HTTPException):  # BodyTooLarge, BodyTimeout
        return error_response(exc.status_code, str(exc.detail))
    log.error("unhandled error on POST %s", scope.get("path"), exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")


def _parse(raw: bytes, dim: int, settings: ServeSettings) -> SearchQuery:
    query = parse_search(raw, dim)
    _check_k(query.k, settings)
    if query.nq > settings.max_vectors:
        raise ApiError(
            413, f"{query.nq} queries is more than this server's limit of {settings.max_vectors}"
        )
    return query


def _search_json(
    state: ServiceState, metrics: ServiceMetrics, settings: ServeSettings, raw: bytes, start: float
) -> bytes:
    query = _parse(raw, loaded(state)[1].dim, settings)
    return _answer(state, metrics, None, query, start)


def _answer(
    state: ServiceState,
    metrics: ServiceMetrics,
    cost: SearchCost | None,
    query: SearchQuery,
    start: float,
) -> bytes:
    """The response body of a parsed search; `cost` learns how long an unfiltered one took."""
    began = time.thread_time()  # CPU time: a busy machine's waits do not count
    found = _search_query(state, metrics, query)
    if cost is not None and query.ids is None and query.filter is None:
        cost.observe(time.thread_time() - began, query.nq)
    metrics.child(metrics.queries, query.kind).inc(query.nq)
    results = [{"neighbors": n, "coarse": None, "gated_to": None} for n in found]
    body = {"results": results, "took_ms": 1000 * (time.perf_counter() - start)}
    try:
        return orjson.dumps(body)
    except TypeError:  # metadata orjson cannot write (an integer over 64 bits): pydantic can
        # (only the dicts of a fallback: the index's own JSON text is written as it is)
        return SearchResponse.model_validate(body).model_dump_json().encode()


def _search_query(
    state: ServiceState, metrics: ServiceMetrics, query: SearchQuery
) -> list[list[dict[str, Any]]]:
    _, index = loaded(state)
    exclude = None
    if query.ids is not None:
        # a bad filter is a 422 before any id's 404; a vector query needs no early check: its
        # search selects the filter's ids before anything else and answers 422 the same way
        allowed_ids(state, query.filter)
        exclude = np.asarray(query.ids, dtype=np.int64)
        xq = stored_vectors(state, query.ids)
    else:
        assert query.xq is not None
        xq = query.xq
    xq = normalise(xq, index.dim)
    return neighbor_rows(
        state,
        metrics,
        xq,
        query.k,
        filter=query.filter,
        exclude=exclude,
        with_metadata=query.with_metadata,
        metadata_json=True,
    )


def _parse_filter(text: str | None) -> Filter | None:
    if text is None or not text.strip():
        return None
    expected = 'a filter like {"must": [{"key": "coarse", "match": {"value": "shoes"}}]}'
    return parse_json_field(_FILTER, text, "filter", expected)


@router.post("/search/image", response_model=SearchResponse)
async def search_image(
    images: ImagesForm,
    request: Request,
    state: ReadyDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
    gate: Annotated[Literal["none", "coarse"], Form()] = "none",
    gate_top: Annotated[
        int, Form(ge=1, description="Coarse classes searched with gate=coarse.")
    ] = 1,
    gate_min_prob: Annotated[
        float | None,
        Form(
            ge=0,
            le=1,
            description="gate=coarse applies when the gate_top classes hold at least this "
            "probability (default: the server's gate_min_prob).",
        ),
    ] = None,
    filter: Annotated[str | None, Form(description="JSON Filter, as in /v1/search.")] = None,
    with_metadata: Annotated[bool, Form()] = True,
) -> SearchResponse:
    """Nearest neighbours of uploaded images, with the predicted coarse classes; with
    gate=coarse, each result's `gate` says whether the search was restricted to them."""
    start = time.perf_counter()
    _check_k(k, settings)
    parsed = _parse_filter(filter)
    payloads = await read_images(images, settings)
    found = await in_pool(
        request,
        _search_images,
        state,
        metrics,
        settings,
        payloads,
        k,
        gate,
        gate_top,
        settings.gate_min_prob if gate_min_prob is None else gate_min_prob,
        parsed,
        with_metadata,
    )
    metrics.queries.labels("image").inc(len(payloads))
    return SearchResponse(results=found, took_ms=1000 * (time.perf_counter() - start))


def _search_images(
    state: ServiceState,
    metrics: ServiceMetrics,
    settings: ServeSettings,
    payloads: list[Payload],
    k: int,
    gate: str,
    gate_top: int,
    min_prob: float,
    filter_: Filter | None,
    with_metadata: bool,
) -> list[QueryResult]:
    embedder, _ = loaded(state)
    allowed_ids(state, filter_)  # before embedding: a bad filter is a cheap 422
    xq, probs = embed_uploads(state, metrics, settings, payloads)  # L2-normalised by the runner
    names = embedder.coarse_classes
    if gate == "coarse":
        if probs is None:
            raise ApiError(422, "gate=coarse needs a model with a coarse head; this one has none")
        guesses = coarse_guesses(probs, names, gate_top)
        return gated_search(
            state,
            metrics,
            xq,
            k,
            guesses,
            min_prob=min_prob,
            filter=filter_,
            with_metadata=with_metadata,
        )
    rows = knn(state, metrics, xq, k, filter=filter_, with_metadata=with_metadata)
    shown = None if probs is None else coarse_guesses(probs, names, COARSE_SHOWN)
    return [
        QueryResult(neighbors=r, coarse=None if shown is None else shown[q])
        for q, r in enumerate(rows)
    ]


@router.post("/embed", response_model=EmbedResponse)
async def embed(
    images: ImagesForm,
    request: Request,
    state: ReadyDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> EmbedResponse:
    """Uploaded images to L2-normalised vectors (and coarse probabilities with a coarse head)."""
    payloads = await read_images(images, settings)
    vectors, probs = await in_pool(request, embed_uploads, state, metrics, settings, payloads)
    embedder, _ = loaded(state)
    return EmbedResponse(
        dim=int(vectors.shape[1]),
        model_sha256=embedder.sha256,
        vectors=vectors.tolist(),
        coarse_probs=None if probs is None else probs.tolist(),
    )
