"""Paths that name a known resource with an id no route would take.

aiohttp normalises dot segments away before routing (`/appointments/..`
becomes `/`), so such a request would meet the router's bare 404: unrecorded
and not counted as a miss. Here it gets exactly what an unknown id gets from
the route it was aimed at: the same problem, a not-found entry in the access
ledger naming what was asked for, and a miss for the enumeration defence
(the throttle middleware sits outside this one and sees the NotFound).
"""

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from domain.errors import NotFound
from infra.http.audit import ACCESS, Access, record_refusal
from infra.http.headers import escaped
from infra.http.keys import ACTOR
from infra.http.routes import ROUTES, Route

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PARAM = re.compile(r"{(\w+)}")


def _aimed_at(method: str, raw_path: str) -> tuple[Route, str, str] | None:
    """The route whose path, up to its first id, starts `raw_path`: (route, param, raw id)."""
    best: tuple[Route, str, str] | None = None
    for route in ROUTES:
        found = _PARAM.search(route.path)
        if route.method != method or found is None:
            continue
        prefix = route.path[: found.start()]
        if raw_path.startswith(prefix) and (best is None or len(prefix) > len(best[2])):
            best = (route, found.group(1), prefix)
    if best is None:
        return None
    route, param, prefix = best
    return route, param, raw_path[len(prefix) :].split("?", 1)[0]


@web.middleware
async def unmatched(request: web.Request, handler: Handler) -> web.StreamResponse:
    error = request.match_info.http_exception
    actor = request.get(ACTOR)
    if error is None or error.status != 404 or actor is None:
        return await handler(request)
    aimed = _aimed_at(request.method, request.raw_path)
    if aimed is None:
        return await handler(request)
    route, param, raw_id = aimed
    if route.audit is not None:
        request[ACCESS] = Access(record_ids=[escaped(raw_id)])
        await record_refusal(request, actor, route.audit, "not-found")
    # The words path_id() uses for an id that is not a uuid.
    raise NotFound(f"no such {param.removesuffix('_id')}", field=param)
