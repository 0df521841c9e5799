"""Every API error is JSON `{"status": ..., "message": ...}` with a precise HTTP status."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

log = logging.getLogger("coins.serve")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# RFC 9110's methods and PATCH: those a route of the app may answer, asked of each on a 405
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
BODY_MODELS: list[type[BaseModel]] = []  # JSON that routes parse themselves, for the OpenAPI


class ApiError(Exception):
    """A request the service refuses; `status` is the HTTP status, `message` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Both parsers below use pydantic's JSON parser, never json.loads: it refuses nesting deeper than
# 200 levels as invalid JSON, where json.loads recurses in Python and raises RecursionError.


def parse_json_body(model: type[M], raw: bytes) -> M:
    """`raw` as `model`, parsed by pydantic's JSON parser; errors as FastAPI's own (422)."""
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as err:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in err.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def parse_json_field(adapter: TypeAdapter[T], text: str, field: str, expected: str) -> T:
    """A form field holding JSON (Starlette bounds one to 1 MiB), as `adapter`'s type; 422
    naming `field` and what was `expected` when it is not valid JSON of that type."""
    try:
        return adapter.validate_json(text)
    except ValidationError as err:
        summary = _summary(err.errors(include_url=False))
        raise ApiError(422, f"{field}: expected {expected}: {summary}") from None


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads its JSON body itself: the body is `model`
    (its schema is added to the components by `add_body_schemas`)."""
    BODY_MODELS.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def json_list_field_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`json_schema_extra` of a form field holding a JSON list of `model`, which its route
    parses itself (`parse_json_field`): the field stays a string, its content is described
    (its schema is added to the components by `add_body_schemas`)."""
    BODY_MODELS.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "contentMediaType": "application/json",
        "contentSchema": {"type": "array", "items": ref},
    }


def add_body_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """Put the schemas of the JSON bodies routes read themselves into an OpenAPI document."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in BODY_MODELS:
        own = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(own.pop("$defs", {}))
        components[model.__name__] = own
    return schema


def error_response(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"status": status, "message": message, **extra}, status_code=status)


def _summary(errors: Sequence[Any]) -> str:
    """The first errors of a validation as "where: what; ...", without FastAPI's "body" prefix."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def _validation_message(error: RequestValidationError) -> str:
    return _summary(error.errors())


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers at the request's path, for the `Allow` of a
    405 (RFC 9110 15.5.6). Starlette answers it from the first route matching the path, with
    that route's methods only: GET /v1/items would hide the POST and DELETE of another router.
    Each method is tried on every route (FastAPI nests included routers, so a route's
    `methods` are not all at the top). Mounts are left out: one matches its whole prefix for
    any method, and the app under it (static files) gives its own `Allow`."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 naming the first errors of a validation, and up to 20 of them in `errors`."""
    errors = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()[:20]]
    return error_response(422, _validation_message(exc), errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors for ApiError, HTTPException, validation errors and anything unexpected."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")
