"""Admin routes (API key required): add and delete items, reload a rebuilt index.

Adds, deletes and reloads run one at a time on the state's writer thread (`ServiceState.write`),
each holding its writer lock: a write changes the index served at that moment, and a reload
never overlaps one. See serve/api/state.py for the order of searches, writes and swaps.
An item's image `path` must lie inside a gallery folder of the index (`ImageFolders`).

With `persist` on, a change is checked, appended to the index's write-ahead log and fsynced
(serve/index/live.py) before it is applied in memory and acknowledged: no index file is
rewritten, and a crash after the 200 loses nothing. A log that cannot be written (a full disk)
answers 507 naming the cause, with nothing changed in memory or on disk. Items' fields are
checked against the index's schema (serve/index/fields.py): a wrong type answers 422 naming the
item and field, and nothing is written. A log past `compact_after_records` or
`compact_after_bytes` is folded into a new generation in the background.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Form, Request
from pydantic import TypeAdapter

from coins.serve.api.deps import (
    AdminDep,
    MetricsDep,
    ReadyDep,
    SettingsDep,
    in_pool,
    loaded,
    manifest_dict,
    summarize,
)
from coins.serve.api.errors import (
    ApiError,
    json_body_schema,
    json_list_field_schema,
    parse_json_body,
    parse_json_field,
)
from coins.serve.api.limits import read_body
from coins.serve.api.loading import reload_index
from coins.serve.api.schemas import (
    AddItemsRequest,
    DeleteItemsRequest,
    ErrorBody,
    IndexSummary,
    ItemsChanged,
    NewItem,
    error_responses,
)
from coins.serve.api.search import normalise
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import Index, ServiceState
from coins.serve.api.thumbnails import ImageFolders
from coins.serve.api.uploads import ImagesForm, embed_uploads, read_images

router = APIRouter(
    prefix="/v1",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={
        **error_responses(400, 401, 404, 408, 409, 413, 415, 422, 503),
        507: {"model": ErrorBody, "description": "The change could not be saved (disk full)."},
    },
)

_ITEMS = TypeAdapter(list[NewItem])
# the form field of /v1/items/images is JSON text; its content is a list of NewItem (vector
# omitted: the images give them), where POST /v1/items takes NewVectorItem (vector required)
_ITEMS_FIELD = json_list_field_schema(NewItem)


def _text(label: str | int | None) -> str | None:
    return None if label is None else str(label)


def _check_new(items: Sequence[NewItem], settings: ServeSettings) -> np.ndarray:
    if len(items) > settings.max_items_add:
        raise ApiError(
            413, f"{len(items)} items is more than the limit of {settings.max_items_add}"
        )
    ids = np.asarray([it.id for it in items], dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ApiError(422, "item ids must be unique within a request")
    return ids


def _add(
    state: ServiceState, settings: ServeSettings, items: Sequence[NewItem], xb: np.ndarray
) -> int:
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
    with state.writer:
        _, index = loaded(state)  # the index served now: a reload cannot swap it meanwhile
        _check_paths(items, index, settings)
        taken = [int(i) for i, m in zip(ids, index.metadata(ids), strict=True) if m is not None]
        if taken:
            raise ApiError(409, f"ids already in the index: {taken[:20]}")
        try:
            if settings.persist and index.log is not None:
                index.log.add(ids, xb, rows)  # checked, then durable: before it is visible
            with state.lock.write():
                index.add(ids, xb, rows)
                state.changed()
        except ValueError as err:  # IndexUpdateError, FieldError: what the index refuses
            raise ApiError(422, f"cannot add these items: {err}") from err
        except OSError as err:  # the log: nothing applied (it comes first), nothing half-written
            raise not_saved(err) from err
        _compact_if_due(state, settings, index)
        return index.ntotal


def not_saved(err: OSError) -> ApiError:
    """A change the write-ahead log could not take: 507 for a full disk or quota, else 500;
    either way it was not applied (the log is written first, and a torn record cut off)."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    return ApiError(
        507 if full else 500,
        f"the change was not saved, and not applied: {err.strerror or err} (the index's "
        "write-ahead log could not be written)",
    )


def _compact_if_due(state: ServiceState, settings: ServeSettings, index: Index) -> None:
    log = index.log
    due = settings.compact_after_records, settings.compact_after_bytes
    if settings.persist and log is not None and log.needs_compaction(*due):
        state.compact_in_background(index)


def _check_paths(items: Sequence[NewItem], index: Index, settings: ServeSettings) -> None:
    """422 unless every item's image path lies inside a gallery folder of `index`: the
    thumbnail route would otherwise show any image file the server can read."""
    folders = ImageFolders.of(manifest_dict(index.manifest), settings.image_roots)
    for item in items:
        if item.path is not None and folders.inside(item.path) is None:
            raise ApiError(
                422,
                f"item {item.id}: path {item.path!r} is not inside a gallery folder of the "
                f"index (symlinks followed); {folders.describe()}",
            )


@router.post("/items", response_model=ItemsChanged, openapi_extra=json_body_schema(AddItemsRequest))
async def add_items(request: Request, state: ReadyDep, settings: SettingsDep) -> ItemsChanged:
    """Add items given by their vectors (normalised here) and metadata.

    The body is read up to its bound (413 past `max_items_add` items' worth of bytes) and
    parsed by pydantic, as /v1/search's: deep nesting is a 422, never a 400."""
    _, index = loaded(state)
    what = f"adding items ({settings.max_items_add} items of dimension {index.dim})"
    raw = await read_body(request, settings.max_add_bytes(index.dim), what)
    body = parse_json_body(AddItemsRequest, raw)
    _check_new(body.items, settings)  # each has a vector: NewVectorItem requires one
    try:
        with np.errstate(over="ignore"):  # overflow gives inf, refused by normalise
            xb = np.asarray([it.vector for it in body.items], dtype=np.float32)
    except ValueError as err:
        raise ApiError(422, f"item vectors must all have dimension {index.dim}") from err
    xb = normalise(xb, index.dim)
    ntotal = await state.write(_add, state, settings, body.items, xb)
    return ItemsChanged(added=len(body.items), ntotal=ntotal)


@router.post("/items/images", response_model=ItemsChanged)
async def add_item_images(
    images: ImagesForm,
    items: Annotated[
        str,
        Form(
            description="JSON list of item metadata, one per image.",
            json_schema_extra=_ITEMS_FIELD,
        ),
    ],
    request: Request,
    state: ReadyDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> ItemsChanged:
    """Add items given by images (embedded here) and their metadata, in the same order."""
    parsed = parse_json_field(_ITEMS, items, "items", "a JSON list of {id, coarse, fine, ...}")
    if len(parsed) != len(images):
        raise ApiError(422, f"got {len(images)} images but {len(parsed)} items")
    _check_new(parsed, settings)
    payloads = await read_images(images, settings)
    xb, _ = await in_pool(request, embed_uploads, state, metrics, settings, payloads)
    ntotal = await state.write(_add, state, settings, parsed, xb)
    return ItemsChanged(added=len(parsed), ntotal=ntotal)


def _remove(state: ServiceState, settings: ServeSettings, ids: list[int]) -> ItemsChanged:
    xid = np.unique(np.asarray(ids, dtype=np.int64))
    with state.writer:
        _, index = loaded(state)  # the index served now: a reload cannot swap it meanwhile
        found = index.metadata(xid)  # no other writer: it stays true until the change below
        missing = [int(i) for i, m in zip(xid, found, strict=True) if m is None]
        present = np.setdiff1d(xid, np.asarray(missing, dtype=np.int64))
        if present.size:
            try:
                if settings.persist and index.log is not None:
                    index.log.remove(present)  # checked, then durable: before it is visible
                with state.lock.write():
                    index.remove(present)
                    state.changed()
            except (NotImplementedError, RuntimeError, ValueError) as err:
                raise ApiError(409, f"cannot delete from this index: {err}") from err
            except OSError as err:
                raise not_saved(err) from err
            _compact_if_due(state, settings, index)
        return ItemsChanged(removed=int(present.size), missing=missing, ntotal=index.ntotal)


@router.delete(
    "/items", response_model=ItemsChanged, openapi_extra=json_body_schema(DeleteItemsRequest)
)
async def delete_items(request: Request, state: ReadyDep, settings: SettingsDep) -> ItemsChanged:
    """Delete items by id; ids not in the index are listed as `missing`."""
    raw = await read_body(request, settings.max_delete_bytes(), "deleting items")
    body = parse_json_body(DeleteItemsRequest, raw)
    return await state.write(_remove, state, settings, body.ids)


@router.post("/reload", response_model=IndexSummary)
async def reload(request: Request, state: ReadyDep) -> IndexSummary:
    """Load the index directory again (rebuilt by `coins index`) and swap it in."""
    await state.write(reload_index, request.app)
    return summarize(state, request.app.state.settings)
