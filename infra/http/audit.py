"""The access ledger at the HTTP edge: every audited route records who touched
which records, and the response leaves only once that record is durable.

A route is audited by an `Audit` in the route table. Its handler says what it
disclosed or changed with `note(...)`; the wrapper writes the entry through
the group-committed ledger and only then returns the response. An audited
handler that notes nothing is a bug and answers 500 rather than disclose
unrecorded. Refusals (not found, denied) are recorded too, naming the ids the
caller asked for.

The header values an entry keeps (`User-Agent`, `X-Purpose-Of-Use`, and the
request id) are stored escaped and bounded: see `infra.http.headers`.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from domain.errors import Forbidden, NotFound
from domain.ledger import AccessRecord
from infra.http.headers import USER_AGENT_LIMIT, escaped, header
from infra.http.keys import ACTOR, REQUEST_ID, SERVICES
from infra.http.wire import HTTPProblem
from services.actors import Actor, ActorKind

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PURPOSE_HEADER = "X-Purpose-Of-Use"
WRITES = frozenset({"create", "change", "delete"})


@dataclass(frozen=True)
class Audit:
    resource: str  # what kind of record: appointment, patient, agenda, …
    action: str  # read | search | export | create | change | delete
    ids: tuple[str, ...] = ()  # path parameters naming the records asked for


@dataclass
class Access:
    """What one request disclosed or changed, noted by its handler."""

    record_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    as_of: int = 0
    noted: bool = False


ACCESS = web.RequestKey("access", Access)


def note(
    request: web.Request,
    *,
    record_ids: Sequence[object],
    patient_ids: Sequence[object] = (),
    fields: Sequence[str] = (),
    as_of: int = 0,
) -> None:
    access = request[ACCESS]
    access.record_ids += [str(i) for i in record_ids]
    access.patient_ids += [str(i) for i in patient_ids if i is not None]
    access.fields += [f for f in fields if f not in access.fields]
    access.as_of = max(access.as_of, as_of)
    access.noted = True


def access_record(
    request: web.Request, actor: Actor, audit: Audit, outcome: str, access: Access
) -> AccessRecord:
    return AccessRecord(
        actor_kind=actor.kind.value,
        actor_id=str(actor.id),
        token_id=str(actor.token_id) if actor.token_id else None,
        integration_id=str(actor.id) if actor.kind is ActorKind.INTEGRATION else None,
        action=audit.action,  # type: ignore[arg-type]
        resource_type=audit.resource,
        record_ids=tuple(dict.fromkeys(access.record_ids)),
        patient_ids=tuple(dict.fromkeys(access.patient_ids)),
        fields=tuple(access.fields),
        purpose=header(request, PURPOSE_HEADER, "treatment"),
        outcome=outcome,  # type: ignore[arg-type]
        at=datetime.now(UTC),
        request_id=request.get(REQUEST_ID, ""),
        client_ip=request.remote or "",
        user_agent=header(request, "User-Agent", limit=USER_AGENT_LIMIT),
        as_of=access.as_of,
    )


def _asked_for(request: web.Request, audit: Audit) -> Access:
    """The ids the caller named: in the path, and any the handler noted from the body."""
    # A path id that is not a uuid is whatever the client sent: kept escaped.
    ids = [escaped(request.match_info[n]) for n in audit.ids if n in request.match_info]
    noted = request.get(ACCESS) or Access()
    return Access(record_ids=(ids + noted.record_ids)[:5], patient_ids=noted.patient_ids[:5])


async def record_refusal(request: web.Request, actor: Actor, audit: Audit, outcome: str) -> None:
    """A not-found or denied attempt, recorded before the refusal is answered."""
    record = access_record(request, actor, audit, outcome, _asked_for(request, audit))
    await request.app[SERVICES].ledger.record(record)


def audited(audit: Audit, handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        actor: Actor = request[ACTOR]
        request[ACCESS] = Access()
        if audit.action in WRITES:
            # Write-ahead: if the ledger cannot take this, nothing changes.
            await request.app[SERVICES].ledger.record(
                access_record(request, actor, audit, "attempted", _asked_for(request, audit))
            )
        try:
            response = await handler(request)
        except NotFound:
            await record_refusal(request, actor, audit, "not-found")
            raise
        except Forbidden:
            await record_refusal(request, actor, audit, "denied")
            raise
        except HTTPProblem as e:
            if e.problem.status == 404:
                await record_refusal(request, actor, audit, "not-found")
            raise
        access = request[ACCESS]
        if not access.noted:
            raise RuntimeError(f"{request.method} {request.path} disclosed without noting what")
        # Fail closed: if this raises (LedgerUnavailable), nothing is sent.
        await request.app[SERVICES].ledger.record(
            access_record(request, actor, audit, "allowed", access)
        )
        return response

    wrapped.carnet_audit = audit  # type: ignore[attr-defined]
    return wrapped


def audit_of(request: web.Request) -> Audit | None:
    handler: Any = request.match_info.handler
    return getattr(handler, "carnet_audit", None)
