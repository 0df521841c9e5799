"""Read-only item routes: list the indexed items, one item's metadata, one item's thumbnail."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from coins.serve.api.deps import ReadyDep, in_pool, loaded
from coins.serve.api.errors import ApiError
from coins.serve.api.schemas import ItemMetadata, ItemsPage, RandomItems, error_responses
from coins.serve.api.search import item_metadata
from coins.serve.api.state import ServiceState
from coins.serve.api.thumbnails import Thumbnails

router = APIRouter(prefix="/v1/items", tags=["items"], responses=error_responses(404, 422, 503))

ItemId = Annotated[int, Path(ge=-(2**63), le=2**63 - 1, description="A stored item id.")]


@router.get("", response_model=ItemsPage)
def list_items(
    state: ReadyDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    coarse: Annotated[str | None, Query()] = None,
    fine: Annotated[str | None, Query()] = None,
) -> ItemsPage:
    """Items in id order, a page at a time, optionally of one coarse or fine label."""
    _, index = loaded(state)
    with state.lock.read():
        ids = np.sort(np.asarray(index.ids_where(coarse=coarse, fine=fine), dtype=np.int64))
        page = ids[offset : offset + limit]
        rows = index.metadata(page) if page.size else []
    items = [item_metadata(int(i), m) for i, m in zip(page, rows, strict=True) if m is not None]
    return ItemsPage(total=int(ids.size), offset=offset, items=items)


@router.get("/random", response_model=RandomItems)
def random_items(
    state: ReadyDep,
    n: Annotated[int, Query(ge=1, le=100, description="How many items.")] = 12,
    seed: Annotated[
        int | None, Query(ge=0, le=2**32 - 1, description="The same seed, the same items.")
    ] = None,
) -> RandomItems:
    """A few items drawn at random without replacement, to browse before any search."""
    _, index = loaded(state)
    with state.lock.read():
        ids = np.asarray(index.select(None), dtype=np.int64)  # every id, kept by the index
        chosen = np.random.default_rng(seed).choice(ids, min(n, ids.size), replace=False)
        rows = index.metadata(chosen) if chosen.size else []
    items = [item_metadata(int(i), m) for i, m in zip(chosen, rows, strict=True) if m is not None]
    return RandomItems(total=int(ids.size), items=items)


def _one(state: ServiceState, id_: int) -> ItemMetadata:
    _, index = loaded(state)
    with state.lock.read():
        (row,) = index.metadata(np.asarray([id_], dtype=np.int64))
    if row is None:
        raise ApiError(404, f"item {id_} is not in the index")
    return item_metadata(id_, row)


@router.get("/{item_id}", response_model=ItemMetadata)
def get_item(item_id: ItemId, state: ReadyDep) -> ItemMetadata:
    """One item's metadata."""
    return _one(state, item_id)


@router.get("/{item_id}/image", response_class=Response)
async def item_image(
    item_id: ItemId,
    request: Request,
    state: ReadyDep,
    size: Annotated[int, Query(ge=8, le=1024)] = 256,
) -> Response:
    """A PNG thumbnail of a stored item; only ids in the index have one."""
    item = _one(state, item_id)
    thumbnails: Thumbnails = request.app.state.thumbnails
    png = await in_pool(request, thumbnails.thumbnail, item, size)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
