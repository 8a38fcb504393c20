"""The aiohttp application factory. Built on demand, never at import time."""

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.http.deadline import deadline
from infra.http.keys import SERVICES, Services
from infra.http.middleware import authenticate, observe, problems
from infra.http.openapi import openapi_document
from infra.http.routes import add_routes
from infra.http.throttle import THROTTLE, Throttle, ThrottlePolicy, throttle
from infra.http.unmatched import unmatched
from infra.http.wire import MAX_BODY, reply


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

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    return app
