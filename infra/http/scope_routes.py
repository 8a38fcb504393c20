"""`POST /analyst/scopes`: a breach scope through the API, bounded, and itself recorded.

The answer is scope.json (docs/analyst.md). The API scopes what fits in a
request: past ROUTE_LIMITS it answers 422 `scope-too-large`, pointing at
`carnet scope`, which has no such bound. The hash chain check gets
CHAIN_SECONDS; a longer chain is reported `unchecked` (run `carnet verify`).
An entry in scope that no longer decodes is answered 409 `ledger-altered`.
"""

from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from infra.http import schemas as s
from infra.http.audit import note
from infra.http.keys import actor_of, services_of
from infra.http.reads import behind
from infra.http.wire import HTTPProblem, read_body
from infra.ledger import UnreadableEntry
from infra.readmodels import NotCaughtUp
from infra.report import disclosed_by, encode, reflected, scoping_service
from services.scoping import Limits, ScopeSelector

ROUTE_LIMITS = Limits(max_entries=20_000, max_records=2_000, seconds=2.5)
CHAIN_SECONDS = 1.0
MAX_VALUES = 20  # per selector

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=s.ONE_LINE)]
Agent = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=s.ONE_LINE)]
Ids = Annotated[list[Id], msgspec.Meta(max_length=MAX_VALUES)]
Agents = Annotated[list[Agent], msgspec.Meta(max_length=MAX_VALUES)]


class ScopeRequest(s.Strict):
    """Which entries to scope: each list empty means any, `not_` lists exclude.

    Give at least one. Ids, addresses and user agents compare as the ledger
    recorded them (user agents escaped, see docs/api.md#headers)."""

    token_ids: Ids = []
    actor_ids: Ids = []
    integration_ids: Ids = []
    client_ips: Ids = []
    user_agents: Agents = []
    not_token_ids: Ids = []
    not_actor_ids: Ids = []
    not_integration_ids: Ids = []
    not_client_ips: Ids = []
    not_user_agents: Agents = []
    patient_ids: Ids = []
    establishment_ids: Ids = []
    practitioner_ids: Ids = []
    record_ids: Ids = []
    from_: datetime | None = msgspec.field(name="from", default=None)
    to: datetime | None = None
    awareness: datetime | None = None  # when the controller became aware (Art. 33)


def selector_of(body: ScopeRequest) -> ScopeSelector:
    given = {
        name: tuple(dict.fromkeys(getattr(body, name)))
        for name in ScopeSelector.__struct_fields__
        if name not in ("since", "until")
    }
    return ScopeSelector(**given, since=body.from_, until=body.to)


async def scope(request: web.Request) -> web.Response:
    body = await read_body(request, ScopeRequest)
    services = services_of(request)
    service = scoping_service(
        services.read.pool, services.clock, entries=services.read, chain_seconds=CHAIN_SECONDS
    )
    try:
        found = await service.scope(
            actor_of(request), selector_of(body), awareness=body.awareness, limits=ROUTE_LIMITS
        )
    except UnreadableEntry as e:
        raise HTTPProblem(
            409,
            "ledger-altered",
            "The access ledger has been altered",
            f"{e}: nothing can be scoped over it; `carnet verify` says where",
            "selector",
        ) from None
    except NotCaughtUp as e:
        raise behind(e, "The access index has not caught up yet", "access_index") from None
    note(request, items=disclosed_by(found), as_of=reflected(found))
    return web.Response(body=encode(found), content_type="application/json")
