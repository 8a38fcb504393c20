"""Typed keys for what the app and each request carry."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from services.actors import Actor
from services.booking import BookingService
from services.directory import DirectoryService


@dataclass(frozen=True)
class Services:
    booking: BookingService
    directory: DirectoryService
    # name -> async check returning "ok" or raising; /readyz runs them all
    checks: dict[str, Callable[[], Awaitable[str]]]


SERVICES = web.AppKey("services", Services)
ACTOR = "carnet.actor"
REQUEST_ID = "carnet.request_id"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})


def actor_of(request: web.Request) -> Actor:
    actor: Actor = request[ACTOR]
    return actor
