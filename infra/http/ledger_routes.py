"""The access ledger, read by the people it protects and by those who audit it.
Both reads are themselves recorded in the ledger."""

from aiohttp import web

from infra.http import schemas as s
from infra.http.audit import disclosed, note
from infra.http.keys import actor_of, services_of
from infra.http.wire import read_query, reply
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
    return reply(
        s.AccessLogOut(
            entries=[
                s.AccessLogEntryOut(
                    at=e.at,
                    actor=e.actor,
                    action=e.action,
                    resource_type=e.resource_type,
                    outcome=e.outcome,
                    fields=list(e.fields),
                    identified=e.identified,
                )
                for e in entries
            ]
        )
    )


def _one(value: str | None) -> frozenset[str]:
    return frozenset() if value is None else frozenset({value})


async def ledger(request: web.Request) -> web.Response:
    query = read_query(request, s.LedgerQueryIn)
    found = await services_of(request).queries.ledger(
        actor_of(request),
        LedgerQuery(
            actor_ids=_one(query.actor_id),
            token_ids=_one(query.token_id),
            patient_ids=_one(query.patient_id),
            record_ids=_one(query.record_id),
            since=query.from_,
            until=query.to,
            limit=query.limit,
        ),
    )
    note(
        request,
        record_ids=[f"ledger:{sequence}" for sequence, _ in found],
        patient_ids=sorted({p for _, r in found for p in r.patient_ids}),
        fields=list(s.LedgerEntryOut.__struct_fields__),
        as_of=max((sequence for sequence, _ in found), default=0),
    )
    return reply(
        s.LedgerOut(
            entries=[
                s.LedgerEntryOut(
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
                )
                for sequence, r in found
            ]
        )
    )
