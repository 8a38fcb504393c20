"""Typed keys for what the app and each request carry."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from infra.http.headers import header
from infra.ledger import Ledger
from infra.readmodels import PostgresReadModels
from services.actors import Actor
from services.booking import BookingService
from services.credentials import CredentialService
from services.directory import DirectoryService
from services.ports import Clock, Metadata
from services.queries import QueryService
from services.rights import RightsService


@dataclass(frozen=True)
class Services:
    booking: BookingService
    directory: DirectoryService
    credentials: CredentialService
    queries: QueryService
    read: PostgresReadModels  # read-your-writes waits
    ledger: Ledger  # the access ledger, group-committed and fail-closed
    clock: Clock  # the time every use case and access entry is stamped with
    # name -> async check returning "ok" or raising; /readyz runs them all
    checks: dict[str, Callable[[], Awaitable[str]]]
    rights: RightsService  # erasure (GDPR Art. 17)


SERVICES = web.AppKey("services", Services)
# Typed request keys (aiohttp >= 3.14 warns on plain string keys).
ACTOR = web.RequestKey("actor", Actor)
REQUEST_ID = web.RequestKey("request_id", str)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})


def actor_of(request: web.Request) -> Actor:
    actor: Actor = request[ACTOR]
    return actor


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def meta_of(request: web.Request) -> Metadata:
    """Who caused the events this request appends, and in answer to what."""
    actor = actor_of(request)
    request_id = request[REQUEST_ID]
    return Metadata(
        actor_kind=actor.kind.value,
        actor_id=str(actor.id),
        request_id=request_id,
        # Escaped like every header kept (infra.http.headers): metadata is jsonb.
        correlation_id=header(request, "X-Correlation-Id") or request_id,
        token_id=str(actor.token_id or ""),
    )
