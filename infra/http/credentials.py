"""Routes for bearer tokens and integration grants."""

from aiohttp import web

from infra.http import schemas as s
from infra.http.keys import actor_of, meta_of, services_of
from infra.http.wire import path_id, read_body, reply
from services.actors import ActorKind


async def issue_token(request: web.Request) -> web.Response:
    body = await read_body(request, s.IssueToken)
    issued = await services_of(request).credentials.issue_token(
        actor_of(request),
        meta_of(request),
        ActorKind(body.actor_kind),
        body.actor_id,
        body.establishment_id,
        body.label,
        body.valid_days,
    )
    assert issued.actor.token_id is not None
    return reply(
        s.TokenOut(
            token=issued.secret,
            token_id=issued.actor.token_id,
            actor_kind=issued.actor.kind.value,
            actor_id=issued.actor.id,
            establishment_id=issued.actor.establishment_id,
        ),
        201,
    )


async def revoke_token(request: web.Request) -> web.Response:
    token_id = path_id(request, "token_id", "token")
    body = await read_body(request, s.RevokeToken)
    position = await services_of(request).credentials.revoke_token(
        actor_of(request), meta_of(request), token_id, body.reason
    )
    return reply(s.TokenStateOut(token_id=token_id, state="revoked"), 200, position)


async def lift_suspension(request: web.Request) -> web.Response:
    token_id = path_id(request, "token_id", "token")
    position = await services_of(request).credentials.lift_suspension(
        actor_of(request), meta_of(request), token_id
    )
    return reply(s.TokenStateOut(token_id=token_id, state="active"), 200, position)


async def grant(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    integration_id = path_id(request, "integration_id", "integration")
    body = await read_body(request, s.GrantScopes)
    given = await services_of(request).credentials.grant(
        actor_of(request), meta_of(request), practitioner_id, integration_id, tuple(body.scopes)
    )
    return reply(
        s.GrantOut(
            practitioner_id=practitioner_id,
            integration_id=integration_id,
            scopes=list(given.scopes),
        )
    )


async def revoke_grant(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    integration_id = path_id(request, "integration_id", "integration")
    revoked = await services_of(request).credentials.revoke_grant(
        actor_of(request), meta_of(request), practitioner_id, integration_id
    )
    return reply(
        s.GrantOut(
            practitioner_id=practitioner_id,
            integration_id=integration_id,
            scopes=list(revoked.scopes),
        )
    )
