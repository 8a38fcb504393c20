"""The access ledger, read by the people it protects and by those who audit it.
Both reads are themselves recorded in the ledger.

`GET /ledger` searches through the access index (infra/access_index.py) and
answers with the entries as the log holds them. The index lags the log by
milliseconds, so the search first waits until it holds every entry committed
before the request (at most the read-your-writes wait, else 503
`not-caught-up`): an entry is found as soon as the request that wrote it has
been answered. It also takes `Carnet-Min-Position`, like every read model.
"""

from typing import get_args

from aiohttp import web

from domain.ledger import AccessRecord, Action, Outcome
from infra.access_index import INDEX
from infra.http import schemas as s
from infra.http.audit import disclosed, note
from infra.http.convert import access_log_entry_out
from infra.http.keys import actor_of, services_of
from infra.http.reads import behind, consistent
from infra.http.wire import HTTPProblem, read_query, reply
from infra.readmodels import NotCaughtUp
from services.ports import LedgerQuery


async def my_access_log(request: web.Request) -> web.Response:
    actor = actor_of(request)
    read = services_of(request).read
    entries, as_of = await read.exactly(
        "access_log", lambda: services_of(request).queries.access_log(actor)
    )
    fields = list(s.AccessLogEntryOut.__struct_fields__)
    note(
        request,
        items=[disclosed(actor.id, patient_id=actor.id, fields=fields, identified=True)],
        as_of=as_of.position,
        as_of_tx=as_of.tx,
    )
    return reply(s.AccessLogOut(entries=[access_log_entry_out(e) for e in entries]))


MAX_VALUES, VALUE_LIMIT = 50, 64
OUTCOMES, ACTIONS = frozenset(get_args(Outcome)), frozenset(get_args(Action))
LEDGER_FIELDS = tuple(s.LedgerEntryOut.__struct_fields__)


def _bad(field: str, detail: str) -> HTTPProblem:
    return HTTPProblem(400, "invalid-input", "The request is invalid", detail, field)


def _set(
    value: str | None, field: str, allowed: frozenset[str] | None = None, split: bool = True
) -> frozenset[str]:
    """A filter's values: one, or several separated by commas."""
    if value is None:
        return frozenset()
    values = value.split(",") if split else [value]
    if len(values) > MAX_VALUES:
        raise _bad(field, f"at most {MAX_VALUES} values")
    for v in values:
        if not v:
            raise _bad(field, "an empty value (two commas in a row, or one at an end)")
        if split and len(v) > VALUE_LIMIT:
            raise _bad(field, f"each value at most {VALUE_LIMIT} characters")
        if allowed is not None and v not in allowed:
            raise _bad(field, f"{v!r} is not one of {', '.join(sorted(allowed))}")
    return frozenset(values)


def ledger_query(q: s.LedgerQueryIn, limit: int | None = None) -> LedgerQuery:
    """The wire query as the ledger search takes it; HTTPProblem (400) naming a bad field."""
    if q.from_ is not None and q.to is not None and q.to <= q.from_:
        raise _bad("to", "must be after `from`")
    return LedgerQuery(
        actor_ids=_set(q.actor_id, "actor_id"),
        token_ids=_set(q.token_id, "token_id"),
        integration_ids=_set(q.integration_id, "integration_id"),
        client_ips=_set(q.client_ip, "client_ip"),
        user_agents=_set(q.user_agent, "user_agent", split=False),
        not_actor_ids=_set(q.not_actor_id, "not_actor_id"),
        not_token_ids=_set(q.not_token_id, "not_token_id"),
        not_integration_ids=_set(q.not_integration_id, "not_integration_id"),
        not_client_ips=_set(q.not_client_ip, "not_client_ip"),
        not_user_agents=_set(q.not_user_agent, "not_user_agent", split=False),
        patient_ids=_set(q.patient_id, "patient_id"),
        record_ids=_set(q.record_id, "record_id"),
        practitioner_ids=_set(q.practitioner_id, "practitioner_id"),
        establishment_ids=_set(q.establishment_id, "establishment_id"),
        outcomes=_set(q.outcome, "outcome", OUTCOMES),
        actions=_set(q.action, "action", ACTIONS),
        resource_types=_set(q.resource_type, "resource_type"),
        since=q.from_,
        until=q.to,
        after=q.after,
        limit=q.limit if limit is None else limit,
    )


def entry_out(sequence: int, r: AccessRecord) -> s.LedgerEntryOut:
    return s.LedgerEntryOut(
        sequence=sequence,
        actor_kind=r.actor_kind,
        actor_id=r.actor_id,
        token_id=r.token_id,
        integration_id=r.integration_id,
        action=r.action,
        resource_type=r.resource_type,
        record_ids=list(r.record_ids),
        patient_ids=list(r.patient_ids),
        fields=list(r.fields),
        purpose=r.purpose,
        outcome=r.outcome,
        at=r.at,
        request_id=r.request_id,
        client_ip=r.client_ip,
        user_agent=r.user_agent,
        as_of=r.as_of,
        on_behalf_of=r.on_behalf_of,
        items=[
            s.DisclosureOut(
                record_id=i.record_id,
                patient_id=i.patient_id,
                identified=i.identified,
                practitioner_id=i.practitioner_id,
                establishment_id=i.establishment_id,
                fields=list(i.fields),
            )
            for i in r.items
        ],
        selectors=list(r.selectors),
        replay=r.replay,
        as_of_tx=r.as_of_tx,
    )


async def ledger(request: web.Request) -> web.Response:
    q = read_query(request, s.LedgerQueryIn)
    # One more than asked: whether there is a next page, without a second query.
    query = ledger_query(q, limit=q.limit + 1)
    queries = await consistent(request, INDEX)  # Carnet-Min-Position, if sent
    try:
        found = await queries.ledger(actor_of(request), query)
    except NotCaughtUp as e:
        raise behind(e, "The access index has not caught up yet", "access_index") from None
    more = len(found) > q.limit
    found = found[: q.limit]
    note(
        request,
        record_ids=[f"ledger:{sequence}" for sequence, _ in found],
        patient_ids=sorted({p for _, r in found for p in r.patient_ids}),
        fields=LEDGER_FIELDS,
        as_of=max((sequence for sequence, _ in found), default=0),
    )
    return reply(
        s.LedgerOut(
            entries=[entry_out(sequence, r) for sequence, r in found],
            next=found[-1][0] if more else None,
        )
    )
