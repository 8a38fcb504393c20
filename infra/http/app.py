"""The aiohttp application factory. Built on demand, never at import time."""

from aiohttp import web

from infra.http.deadline import deadline
from infra.http.keys import SERVICES, Services
from infra.http.middleware import authenticate, observe, problems
from infra.http.openapi import openapi_document
from infra.http.routes import add_routes
from infra.http.throttle import THROTTLE, Throttle, ThrottlePolicy, throttle
from infra.http.unmatched import unmatched
from infra.http.wire import MAX_BODY, reply
from infra.metrics import zero_http_routes
from infra.metrics_server import metrics_handler


def create_app(
    services: Services, policy: ThrottlePolicy | None = None, *, request_timeout: float = 5.0
) -> web.Application:
    # The deadline sits inside `problems`, which renders its 503, and outside
    # everything that may wait on the database (authentication included).
    app = web.Application(
        middlewares=[
            observe,
            problems,
            deadline(request_timeout),
            authenticate,
            throttle,
            unmatched,
        ],
        client_max_size=MAX_BODY,
    )
    app[SERVICES] = services
    app[THROTTLE] = Throttle(policy or ThrottlePolicy())

    async def flush_ledger(app: web.Application) -> None:
        await app[SERVICES].ledger.close()

    app.on_cleanup.append(flush_ledger)
    add_routes(app)
    document = openapi_document()

    async def openapi(request: web.Request) -> web.Response:
        return reply(document)

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics_handler)
    zero_http_routes(
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "*"
    )
    return app
