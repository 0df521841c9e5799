"""Typed dependencies of the routes: settings, metrics, the loaded state, the admin guard."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request

from coins.serve.api.errors import ApiError
from coins.serve.api.observability import ServiceMetrics
from coins.serve.api.schemas import IndexSummary
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import Index, QueryEmbedder, ServiceState

T = TypeVar("T")


def get_settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


def get_ready_state(state: Annotated[ServiceState, Depends(get_state)]) -> ServiceState:
    """The state once model and index are loaded and warm; 503 before."""
    return ready_state(state)


def ready_state(state: ServiceState) -> ServiceState:
    """`state` if loaded and warm, else 503 (`get_ready_state` without FastAPI's resolution)."""
    if not state.ready:
        reason = state.error or "the model and index are still loading"
        raise ApiError(503, f"not ready: {reason}")
    return state


def require_admin(
    settings: Annotated[ServeSettings, Depends(get_settings)],
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """Admin routes exist only with an API key configured, and need it (X-API-Key or Bearer)."""
    if settings.api_key is None:
        raise ApiError(403, "admin routes are disabled: the server has no API key configured")
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if given is None:
        raise ApiError(401, "admin route: send the API key in X-API-Key or Authorization: Bearer")
    if not secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise ApiError(401, "admin route: wrong API key")


async def in_pool(request: Request, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run blocking `fn` in the server's search pool (sized by `workers`)."""
    return await run_in_pool(request.app.state.pool, fn, *args, **kwargs)


async def run_in_pool(
    pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object, **kwargs: object
) -> T:
    """Run blocking `fn` in `pool`."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))


def loaded(state: ServiceState) -> tuple[QueryEmbedder, Index]:
    assert state.embedder is not None and state.index is not None
    return state.embedder, state.index


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
StateDep = Annotated[ServiceState, Depends(get_state)]
ReadyDep = Annotated[ServiceState, Depends(get_ready_state)]
AdminDep = Depends(require_admin)


def manifest_dict(manifest: Any) -> dict[str, Any]:
    """The index manifest as a plain mapping, whatever object the index keeps it in."""
    if dataclasses.is_dataclass(manifest) and not isinstance(manifest, type):
        return dataclasses.asdict(manifest)
    if hasattr(manifest, "model_dump"):
        dumped: dict[str, Any] = manifest.model_dump()
        return dumped
    return dict(manifest or {})


def summarize(state: ServiceState, settings: ServeSettings) -> IndexSummary:
    """The manifest of the served index, its size, and the model it was built with."""
    embedder, index = loaded(state)
    manifest = manifest_dict(index.manifest)
    fields = manifest.get("fields")
    classes = manifest.get("classes") or {}
    return IndexSummary(
        ntotal=index.ntotal,
        dim=index.dim,
        model_sha256=embedder.sha256,
        coarse_classes=embedder.coarse_classes,
        fields=None if fields is None else {str(k): str(v) for k, v in fields.items()},
        classes={
            level: [str(c) for c in classes.get(level) or ()]
            for level in ("coarse", "fine")
            if classes.get(level)
        },
        report_url="/report/" if settings.report_dir is not None else None,
        loaded_at=state.loaded_at,
        manifest=manifest,
    )
