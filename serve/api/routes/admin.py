"""Admin routes (API key required): add and delete items, reload a rebuilt index.

Writes hold the write side of the state's lock; a reload loads the new index with no lock held and
only swaps the reference under it, so searches in flight finish on the old index.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Form, Request
from pydantic import TypeAdapter, ValidationError

from coins.serve.api.deps import (
    AdminDep,
    MetricsDep,
    ReadyDep,
    SettingsDep,
    in_pool,
    loaded,
    summarize,
)
from coins.serve.api.errors import ApiError
from coins.serve.api.loading import reload_index
from coins.serve.api.schemas import (
    AddItemsRequest,
    DeleteItemsRequest,
    IndexSummary,
    ItemsChanged,
    NewItem,
)
from coins.serve.api.search import normalise
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import ServiceState
from coins.serve.api.uploads import ImagesForm, embed_uploads, read_images

router = APIRouter(prefix="/v1", tags=["admin"], dependencies=[AdminDep])

_ITEMS = TypeAdapter(list[NewItem])


def _text(label: str | int | None) -> str | None:
    return None if label is None else str(label)


def _check_new(items: list[NewItem], settings: ServeSettings) -> np.ndarray:
    if len(items) > settings.max_items_add:
        raise ApiError(
            413, f"{len(items)} items is more than the limit of {settings.max_items_add}"
        )
    ids = np.asarray([it.id for it in items], dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ApiError(422, "item ids must be unique within a request")
    return ids


def _add(state: ServiceState, settings: ServeSettings, items: list[NewItem], xb: np.ndarray) -> int:
    _, index = loaded(state)
    ids = np.asarray([it.id for it in items], dtype=np.int64)
    rows: list[dict[str, Any]] = [
        {
            **it.extra,
            "id": it.id,
            "path": it.path,
            "coarse": _text(it.coarse),
            "fine": _text(it.fine),
        }
        for it in items
    ]
    with state.lock.write():
        taken = [int(i) for i, m in zip(ids, index.metadata(ids), strict=True) if m is not None]
        if taken:
            raise ApiError(409, f"ids already in the index: {taken[:20]}")
        try:
            index.add(ids, xb, rows)
        except ValueError as err:  # IndexUpdateError: what the index refuses to store
            raise ApiError(422, f"cannot add these items: {err}") from err
        state.changed()
        if settings.persist:
            index.save()
        return index.ntotal


@router.post("/items", response_model=ItemsChanged)
async def add_items(
    body: AddItemsRequest, request: Request, state: ReadyDep, settings: SettingsDep
) -> ItemsChanged:
    """Add items given by their vectors (normalised here) and metadata."""
    _check_new(body.items, settings)
    _, index = loaded(state)
    if any(it.vector is None for it in body.items):
        raise ApiError(422, "every item needs a `vector` here; upload images to /v1/items/images")
    try:
        with np.errstate(over="ignore"):  # overflow gives inf, refused by normalise
            xb = np.asarray([it.vector for it in body.items], dtype=np.float32)
    except ValueError as err:
        raise ApiError(422, f"item vectors must all have dimension {index.dim}") from err
    xb = normalise(xb, index.dim)
    ntotal = await in_pool(request, _add, state, settings, body.items, xb)
    return ItemsChanged(added=len(body.items), ntotal=ntotal)


@router.post("/items/images", response_model=ItemsChanged)
async def add_item_images(
    images: ImagesForm,
    items: Annotated[str, Form(description="JSON list of item metadata, one per image.")],
    request: Request,
    state: ReadyDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> ItemsChanged:
    """Add items given by images (embedded here) and their metadata, in the same order."""
    try:
        parsed = _ITEMS.validate_python(json.loads(items))
    except (json.JSONDecodeError, ValidationError) as err:
        raise ApiError(
            422, f"items: expected a JSON list of {{id, coarse, fine, ...}}: {err}"
        ) from err
    if len(parsed) != len(images):
        raise ApiError(422, f"got {len(images)} images but {len(parsed)} items")
    _check_new(parsed, settings)
    payloads = await read_images(images, settings)
    xb, _ = await in_pool(request, embed_uploads, state, metrics, settings, payloads)
    ntotal = await in_pool(request, _add, state, settings, parsed, xb)
    return ItemsChanged(added=len(parsed), ntotal=ntotal)


def _remove(state: ServiceState, settings: ServeSettings, ids: list[int]) -> ItemsChanged:
    _, index = loaded(state)
    xid = np.unique(np.asarray(ids, dtype=np.int64))
    with state.lock.write():
        found = index.metadata(xid)
        present = np.asarray(
            [i for i, m in zip(xid, found, strict=True) if m is not None], np.int64
        )
        missing = [int(i) for i, m in zip(xid, found, strict=True) if m is None]
        if present.size:
            try:
                index.remove(present)
            except (NotImplementedError, RuntimeError, ValueError) as err:
                raise ApiError(409, f"cannot delete from this index: {err}") from err
            state.changed()
            if settings.persist:
                index.save()
        return ItemsChanged(removed=int(present.size), missing=missing, ntotal=index.ntotal)


@router.delete("/items", response_model=ItemsChanged)
async def delete_items(
    body: DeleteItemsRequest, request: Request, state: ReadyDep, settings: SettingsDep
) -> ItemsChanged:
    """Delete items by id; ids not in the index are listed as `missing`."""
    return await in_pool(request, _remove, state, settings, body.ids)


@router.post("/reload", response_model=IndexSummary)
async def reload(request: Request, state: ReadyDep) -> IndexSummary:
    """Load the index directory again (rebuilt by `coins index`) and swap it in."""
    await in_pool(request, reload_index, request.app)
    return summarize(state, request.app.state.settings)
