"""Routes for bearer tokens and integration grants: issue, list, revoke, lift a
suspension, rotate; give, withdraw and list grants.

Every change is an event in the log, and every call, a listing too, leaves
an entry in the access ledger (resource type `token` or `grant`) naming the
tokens or grants it touched. No answer or entry ever holds a token's secret
but the issuing (or rotating) answer itself.

Listings are paged like `GET /ledger`: `limit`, and `after` set to the
previous page's `next` (null on the last page).
"""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from aiohttp import web

from domain.credentials import Grant, Token
from infra.http import schemas as s
from infra.http.audit import Access, Describe, add, note
from infra.http.keys import actor_of, meta_of, services_of
from infra.http.wire import (
    path_id,
    read_body,
    read_query,
    reply,
)
from services.actors import ActorKind
from services.credentials import IssuedToken
from services.ports import GrantRow, TokenQuery, TokenRow

TOKEN_FIELDS = tuple(s.TokenInfoOut.__struct_fields__)
ISSUED_FIELDS = tuple(f for f in s.TokenOut.__struct_fields__ if f != "token")
GRANT_FIELDS = tuple(s.GrantOut.__struct_fields__)


def describe_tokens(*fields: str) -> Describe:
    """What a token write's answer discloses of the tokens it saves (Audit.describe)."""

    async def describe(request: web.Request, saved: Sequence[Any]) -> Access:
        tokens = [t.id for t in saved if isinstance(t, Token)]
        return add(Access(), record_ids=tokens, fields=fields)

    return describe


async def describe_grants(request: web.Request, saved: Sequence[Any]) -> Access:
    grants = [g.id for g in saved if isinstance(g, Grant)]
    return add(Access(), record_ids=grants, fields=GRANT_FIELDS)


async def _head(request: web.Request) -> int:
    """What a token or grant answer reflects: the log as of at least here."""
    return await services_of(request).read.store.last_position()


def _issued_out(issued: IssuedToken) -> s.TokenOut:
    assert issued.actor.token_id is not None
    return s.TokenOut(
        token=issued.secret,
        token_id=issued.actor.token_id,
        actor_kind=issued.actor.kind.value,
        actor_id=issued.actor.id,
        establishment_id=issued.actor.establishment_id,
        replaces=issued.replaces,
    )


def token_out(row: TokenRow) -> s.TokenInfoOut:
    return s.TokenInfoOut(
        token_id=row.token_id,
        display_name=row.display_name,
        actor_kind=row.actor_kind,
        actor_id=row.actor_id,
        establishment_id=row.establishment_id,
        state=row.state,  # type: ignore[arg-type]
        reason=row.reason,
        expires_at=row.expires_at,
        created=row.created,
        last_used_at=row.last_used_at,
    )


def grant_out(row: GrantRow) -> s.GrantOut:
    return s.GrantOut(
        practitioner_id=row.practitioner_id,
        integration_id=row.integration_id,
        scopes=list(row.scopes),
    )


# -- tokens -----------------------------------------------------------------


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
    note(request, record_ids=[issued.actor.token_id], fields=ISSUED_FIELDS, as_of=issued.position)
    response = reply(_issued_out(issued), 201, issued.position)
    response.headers["Cache-Control"] = "no-store"  # it carries a secret
    return response


async def list_tokens(request: web.Request) -> web.Response:
    q = read_query(request, s.TokensQuery)
    query = TokenQuery(
        actor_ids=frozenset({q.actor_id} if q.actor_id else ()),
        actor_kinds=frozenset({q.actor_kind} if q.actor_kind else ()),
        states=frozenset({q.state} if q.state else ()),
        establishment_ids=frozenset({q.establishment_id} if q.establishment_id else ()),
        after=q.after,
        limit=q.limit + 1,  # one more: whether there is a next page
    )
    head = await _head(request)
    found = await services_of(request).credentials.list_tokens(actor_of(request), query)
    more = len(found) > q.limit
    found = found[: q.limit]
    note(request, record_ids=[t.token_id for t in found], fields=TOKEN_FIELDS, as_of=head)
    return reply(
        s.TokenListOut(
            tokens=[token_out(t) for t in found], next=found[-1].position if more else None
        )
    )


async def revoke_token(request: web.Request) -> web.Response:
    token_id = path_id(request, "token_id", "token")
    body = await read_body(request, s.RevokeToken)
    position = await services_of(request).credentials.revoke_token(
        actor_of(request), meta_of(request), token_id, body.reason
    )
    note(request, record_ids=[token_id], fields=("state",), as_of=position)
    return reply(s.TokenStateOut(token_id=token_id, state="revoked"), 200, position)


async def lift_suspension(request: web.Request) -> web.Response:
    token_id = path_id(request, "token_id", "token")
    position = await services_of(request).credentials.lift_suspension(
        actor_of(request), meta_of(request), token_id
    )
    note(request, record_ids=[token_id], fields=("state",), as_of=position)
    return reply(s.TokenStateOut(token_id=token_id, state="active"), 200, position)


async def rotate_token(request: web.Request) -> web.Response:
    token_id = path_id(request, "token_id", "token")
    # The body is optional: no body rotates with the defaults.
    body = await read_body(request, s.RotateToken) if request.body_exists else s.RotateToken()
    issued = await services_of(request).credentials.rotate_token(
        actor_of(request), meta_of(request), token_id, body.valid_days
    )
    note(
        request,
        record_ids=[token_id, issued.actor.token_id],
        fields=("state", *ISSUED_FIELDS),
        as_of=issued.position,
    )
    response = reply(_issued_out(issued), 201, issued.position)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- grants -----------------------------------------------------------------


def _grant_id(practitioner_id: UUID, integration_id: UUID) -> str:
    return str(Grant.create_id(practitioner_id, integration_id))


async def grant(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    integration_id = path_id(request, "integration_id", "integration")
    body = await read_body(request, s.GrantScopes)
    given = await services_of(request).credentials.grant(
        actor_of(request), meta_of(request), practitioner_id, integration_id, tuple(body.scopes)
    )
    return await _grant_answer(request, practitioner_id, integration_id, given.scopes)


async def revoke_grant(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    integration_id = path_id(request, "integration_id", "integration")
    revoked = await services_of(request).credentials.revoke_grant(
        actor_of(request), meta_of(request), practitioner_id, integration_id
    )
    return await _grant_answer(request, practitioner_id, integration_id, revoked.scopes)


async def _grant_answer(
    request: web.Request, practitioner_id: UUID, integration_id: UUID, scopes: tuple[str, ...]
) -> web.Response:
    """A grant given or withdrawn: its access entry, and the grant as it now stands."""
    note(
        request,
        record_ids=[_grant_id(practitioner_id, integration_id)],
        fields=GRANT_FIELDS,
        as_of=await _head(request),
    )
    return reply(
        s.GrantOut(
            practitioner_id=practitioner_id, integration_id=integration_id, scopes=list(scopes)
        )
    )


async def _grants(
    request: web.Request,
    practitioner_id: UUID | None,
    integration_id: UUID | None,
    after: int,
    limit: int,
) -> web.Response:
    head = await _head(request)
    found = await services_of(request).credentials.list_grants(
        actor_of(request), practitioner_id, integration_id, after, limit + 1
    )
    more = len(found) > limit
    found = found[:limit]
    note(request, record_ids=[g.grant_id for g in found], fields=GRANT_FIELDS, as_of=head)
    return reply(
        s.GrantListOut(
            grants=[grant_out(g) for g in found], next=found[-1].position if more else None
        )
    )


async def list_grants(request: web.Request) -> web.Response:
    q = read_query(request, s.GrantsQuery)
    return await _grants(request, q.practitioner_id, q.integration_id, q.after, q.limit)


async def practitioner_grants(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    q = read_query(request, s.PractitionerGrantsQuery)
    return await _grants(request, practitioner_id, q.integration_id, q.after, q.limit)
