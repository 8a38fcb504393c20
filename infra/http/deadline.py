"""A deadline on every request: past it, 503 with Retry-After (infra/deadlines.py)."""

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from infra.deadlines import bounded

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def deadline(seconds: float) -> Middleware:
    """Answer every request within `seconds`: past that, 503 with Retry-After.

    The `problems` middleware renders the DeadlineExceeded (an Unavailable)
    as 503 `unavailable`. A write cut off here may still commit: as for any
    503 on a write, the client retries with the same Idempotency-Key.
    """

    @web.middleware
    async def within_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await bounded(handler(request), seconds, "this request's dependencies")

    return within_deadline
