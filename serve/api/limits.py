"""The limits on reading a request body: its size (413) and how long it may take (408).

`BodyLimits` bites in an ASGI middleware, before any route parses a body: a declared
Content-Length over the limit is refused at once, a chunked body as soon as its chunks pass the
limit. Routes that parse their JSON themselves (`read_body`) bound it lower, by what they accept.
POST /v1/search, answered before the middleware, applies both in one (`receive_body`).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Awaitable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coins.serve.api.errors import ApiError, error_response


class BodyTooLarge(HTTPException):
    """413. An HTTPException, so that FastAPI passes it on from its form and JSON parsing, which
    turn any other error raised while reading a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit:,} bytes")


class BodyTimeout(HTTPException):
    """408: the client was too slow sending the body (an HTTPException for the same reason)."""

    def __init__(self, why: str) -> None:
        super().__init__(408, f"request body: {why}")


class BodyLimits:
    """ASGI middleware: at most `max_body` bytes (413), at most `idle_timeout` seconds between
    two chunks and `total_timeout` seconds from the request's arrival to the body's end (408)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        idle_timeout: float = math.inf,
        total_timeout: float = math.inf,
    ) -> None:
        self.app, self.max_body = app, max_body
        self.idle_timeout, self.total_timeout = idle_timeout, total_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received, started, body_done = 0, False, False
        deadline = time.monotonic() + self.total_timeout

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later calls wait for a disconnect: no time limit on those
                return await receive()
            message = await next_message(receive, self.idle_timeout, deadline, self.total_timeout)
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge(self.max_body)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if declared_length(scope) > self.max_body:
                raise BodyTooLarge(self.max_body)
            await self.app(scope, limited_receive, send_started)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside the routes' error handlers
            if started:
                raise
            await error_response(exc.status_code, exc.detail)(scope, receive, send)


async def next_message(
    receive: Receive, idle_timeout: float, deadline: float, total_timeout: float
) -> Message:
    """The next message of a body, or 408 (BodyTimeout) after `idle_timeout` s without one or
    at `deadline` (time.monotonic(); `total_timeout` s after the request arrived)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise BodyTimeout(f"not received within {total_timeout:g} s")
    try:
        return await _within(receive(), min(idle_timeout, left))
    except TimeoutError:
        if left > idle_timeout:
            raise BodyTimeout(f"no data for {idle_timeout:g} s") from None
        raise BodyTimeout(f"not received within {total_timeout:g} s") from None


async def _within(receive: Awaitable[Message], seconds: float) -> Message:
    """`await receive` or TimeoutError after `seconds`. asyncio.timeout (3.11) only arms a
    timer; wait_for before 3.12 wraps the await in a new task, ~20 us on every request."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds if math.isfinite(seconds) else None):
            return await receive
    return await asyncio.wait_for(receive, seconds)


def declared_length(scope: Scope) -> int:
    """The request's Content-Length, 0 when absent or not a number."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The body of a route that parses its JSON itself, or 413 as soon as it is known to exceed
    `limit` bytes (allowed for `what`): by its Content-Length before a byte is read, or while a
    chunked body streams in. Nothing larger is ever parsed."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit, what, f"{int(declared):,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit, what, f"at least {size:,}")
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int, what: str, size: str) -> ApiError:
    return ApiError(
        413,
        f"request body of {size} bytes is more than this server's limit of {limit:,} bytes "
        f"for {what}",
    )


async def receive_body(
    receive: Receive,
    declared: int,
    limit: int,
    what: str,
    idle_timeout: float,
    deadline: float,
    total_timeout: float,
) -> bytes:
    """`read_body` and `BodyLimits` in one, straight from ASGI's `receive`, for a route
    answered before the middleware (routes/search.py `SearchEndpoint`): 413 by `declared`
    (the Content-Length, 0 if none) or as soon as the chunks pass `limit`; 408 after
    `idle_timeout` s without a chunk or at `deadline` (time.monotonic()); ClientDisconnect
    when the client leaves."""
    if declared > limit:
        raise too_large(limit, what, f"{declared:,}")
    chunks, size = [], 0
    while True:
        message = await next_message(receive, idle_timeout, deadline, total_timeout)
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit, what, f"at least {size:,}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
