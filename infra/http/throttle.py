"""Per-actor rate limits and the enumeration defence, shared by every worker.

A token bucket per token answers 429 with Retry-After when an actor goes too
fast. Every request that costs an access-ledger write pays from it, so
flooding cannot grow the ledger faster than the rate: an active token's
requests, and a revoked, suspended or expired token's 401s (each writes a
`denied` entry). Both are charged in `middleware.authenticate`, by the same
statement that looks the token up (CredentialService.admit). A 429 writes no
entry: the request reached no handler and disclosed nothing.

Separately, not-found and denied object look-ups are counted per token in a
sliding window: a burst of them (the 2020 attack: walking other people's
appointment ids) records an `EnumerationSuspected` event, answers 429, and by
policy suspends the token until an admin lifts it. An admin token is never
suspended, only flagged: it may see every object, so its misses are ids
that exist nowhere, and suspending it would lock out administration (lifting
suspensions, issuing tokens) until someone ran the CLI on the server.

No state is kept here: buckets and windows live in PostgreSQL
(infra/admission.py), so N workers, on one machine or several, grant what
one would, and a token suspended by one is refused by all at its next request.
"""

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

from aiohttp import web

from domain.errors import Forbidden, NotFound
from infra.http.keys import ACTOR, REQUEST_ID, SERVICES
from infra.http.wire import HTTPProblem
from infra.metrics import ENUMERATION_SUSPECTED, THROTTLED, TOKEN_SUSPENSIONS
from services.actors import ActorKind
from services.ports import Metadata, RateLimit

log = logging.getLogger("carnet.throttle")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ThrottlePolicy:
    rate_per_second: float = 50.0
    burst: int = 100
    enumeration_misses: int = 20  # not-found/denied look-ups…
    enumeration_window: float = 60.0  # …within this many seconds
    suspend_on_enumeration: bool = True

    @property
    def limit(self) -> RateLimit:
        return RateLimit(self.rate_per_second, self.burst)


@dataclass(frozen=True)
class Throttle:
    """The app's policy; the counts it applies to are in the database."""

    policy: ThrottlePolicy = field(default_factory=ThrottlePolicy)


THROTTLE = web.AppKey("throttle", Throttle)


def too_many(retry_after: float, detail: str) -> HTTPProblem:
    return HTTPProblem(
        429,
        "throttled",
        "Too Many Requests",
        detail,
        "Authorization",
        {"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


@web.middleware
async def throttle(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the misses of an authenticated request (its rate was charged as it
    was authenticated: one statement for both, see middleware.authenticate)."""
    actor = request.get(ACTOR)
    if actor is None or actor.token_id is None:
        return await handler(request)
    limiter = request.app[THROTTLE]
    try:
        response = await handler(request)
    except (NotFound, Forbidden):
        await _count_miss(request, limiter, actor.token_id)
        raise
    except HTTPProblem as e:
        if e.problem.status in (403, 404):
            await _count_miss(request, limiter, actor.token_id)
        raise
    if response.status in (403, 404):
        await _count_miss(request, limiter, actor.token_id)
    return response


async def _count_miss(request: web.Request, limiter: Throttle, token_id: UUID) -> None:
    policy = limiter.policy
    credentials = request.app[SERVICES].credentials
    misses = await credentials.count_miss(
        token_id, policy.enumeration_misses, policy.enumeration_window
    )
    if misses is None:
        return
    ENUMERATION_SUSPECTED.inc()
    actor = request[ACTOR]
    # An admin is flagged, never suspended (see the module's docstring).
    suspend = policy.suspend_on_enumeration and actor.kind is not ActorKind.ADMIN
    log.warning("enumeration suspected: token %s, %s misses", token_id, misses)
    meta = Metadata(
        actor_kind="system",
        actor_id="enumeration-defence",
        request_id=request[REQUEST_ID],
        token_id=str(token_id),
    )
    await credentials.report_enumeration(meta, token_id, misses, policy.enumeration_window, suspend)
    if suspend:
        TOKEN_SUSPENSIONS.inc()
    THROTTLED.labels("enumeration").inc()
    raise too_many(
        policy.enumeration_window,
        f"too many look-ups of objects you cannot see ({actor.kind.value} token "
        + ("suspended" if suspend else "flagged")
        + ")",
    )
