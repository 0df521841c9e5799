"""Operations routes: liveness, readiness, Prometheus metrics, and what index is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from coins.serve.api.deps import MetricsDep, ReadyDep, SettingsDep, StateDep, summarize
from coins.serve.api.observability import exposition
from coins.serve.api.schemas import Health, IndexSummary

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers (it may still be loading)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(state: StateDep) -> Any:
    """200 once the model and index are loaded and warmed up; 503 before, or if loading failed."""
    if state.ready:
        return Health(status="ok")
    if state.error:
        body = Health(status="failed", message=state.error)
    else:
        body = Health(status="loading", message="loading the model and index")
    return JSONResponse(body.model_dump(), status_code=503)


@router.get("/metrics", response_class=Response)
def metrics(state: StateDep, m: MetricsDep) -> Response:
    """Prometheus text format; the sum over all processes of `coins serve --processes N`."""
    if state.index is not None:
        m.index_size.set(state.index.ntotal)
    m.ready.set(1 if state.ready else 0)
    return Response(exposition(m), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/index", response_model=IndexSummary, tags=["items"])
def index_summary(state: ReadyDep, settings: SettingsDep) -> IndexSummary:
    """The manifest of the served index, its size, and the model it was built with."""
    return summarize(state, settings)
