"""Read routes: answered from read models, after an optional read-your-writes wait."""

from dataclasses import replace

from aiohttp import web

from infra.http import schemas as s
from infra.http.audit import disclosed, note
from infra.http.convert import establishment_out, patient_appointment_out, practitioner_out
from infra.http.keys import SERVICES, actor_of, services_of
from infra.http.wire import (
    MIN_POSITION_HEADER,
    HTTPProblem,
    min_position,
    path_id,
    read_query,
    reply,
)
from infra.readmodels import NotCaughtUp
from services.queries import Offer, QueryService

AGENDA_FIELDS = tuple(s.AgendaEntryOut.__struct_fields__)
PATIENT_APPOINTMENT_FIELDS = tuple(s.PatientAppointmentOut.__struct_fields__)


def behind(e: NotCaughtUp, title: str, field: str | None = None) -> HTTPProblem:
    """The answer while a read model is behind what the request needs: retry soon."""
    return HTTPProblem(503, "not-caught-up", title, str(e), field, {"Retry-After": "1"})


async def consistent(request: web.Request, *projections: str) -> QueryService:
    """Wait until the read models hold the client's last write, if it named one."""
    services = request.app[SERVICES]
    position = min_position(request)
    if position is not None:
        try:
            await services.read.wait_for(position, projections)
        except NotCaughtUp as e:
            raise behind(e, "The read model has not caught up yet", MIN_POSITION_HEADER) from None
    return services.queries


async def get_establishment(request: web.Request) -> web.Response:
    establishment_id = path_id(request, "establishment_id", "establishment")
    queries = await consistent(request, "directory")
    return reply(
        establishment_out(await queries.establishment(actor_of(request), establishment_id))
    )


async def list_establishments(request: web.Request) -> web.Response:
    query = read_query(request, s.EstablishmentsQuery)
    queries = await consistent(request, "directory")
    found = await queries.establishments(actor_of(request), query.city)
    return reply(s.EstablishmentList(establishments=[establishment_out(e) for e in found]))


async def get_practitioner(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    queries = await consistent(request, "directory")
    return reply(practitioner_out(await queries.practitioner(actor_of(request), practitioner_id)))


async def list_practitioners(request: web.Request) -> web.Response:
    query = read_query(request, s.PractitionersQuery)
    queries = await consistent(request, "directory")
    found = await queries.practitioners(actor_of(request), query.specialty, query.city)
    return reply(s.PractitionerList(practitioners=[practitioner_out(p) for p in found]))


def _offer(offer: Offer) -> s.OfferOut:
    p = offer.practitioner
    return s.OfferOut(
        practitioner_id=p.id,
        name=p.name,
        specialty=p.specialty,
        establishment_id=p.establishment_id,
        city=p.city,
        motive_id=offer.motive.id,
        slots=[s.SlotOut(start=i.start, end=i.end) for i in offer.slots],
    )


async def availability(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    query = read_query(request, s.AvailabilityQuery)
    queries = await consistent(request, "availability")
    offers = await queries.offers(
        actor_of(request),
        query.from_,
        query.to,
        practitioner_id=practitioner_id,
        motive_id=query.motive_id,
    )
    # No offer: the motive exists but this actor may not book it online.
    slots = [s.SlotOut(start=i.start, end=i.end) for o in offers for i in o.slots]
    return reply(
        s.AvailabilityOut(practitioner_id=practitioner_id, motive_id=query.motive_id, slots=slots)
    )


async def search(request: web.Request) -> web.Response:
    query = read_query(request, s.SearchQuery)
    queries = await consistent(request, "availability")
    offers = await queries.offers(
        actor_of(request),
        query.from_,
        query.to,
        specialty=query.specialty,
        city=query.city,
        motive_id=query.motive_id,
    )
    return reply(s.SearchOut(offers=[_offer(o) for o in offers]))


async def agenda(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    query = read_query(request, s.AgendaQuery)
    queries = await consistent(request, "agenda")
    actor = actor_of(request)
    view, as_of = await services_of(request).read.exactly(
        "agenda", lambda: queries.agenda(actor, practitioner_id, query.date)
    )
    entries = view.entries
    masked = bool(view.hidden & {"patient_id", "patient_name"})
    shown = [f for f in AGENDA_FIELDS if not (masked and f.startswith("patient"))]
    # A masked line still concerns its patient: the item names them, not identified.
    note(
        request,
        items=[
            disclosed(
                e.appointment_id,
                patient_id=e.patient_id,
                practitioner_id=practitioner_id,
                establishment_id=view.establishment_id,
                fields=shown,
            )
            for e in entries
        ],
        fields=shown,
        as_of=as_of.position,
        as_of_tx=as_of.tx,
    )
    if masked:
        entries = [replace(e, patient_id=None, patient_name=None) for e in entries]
    return reply(
        s.AgendaOut(
            practitioner_id=practitioner_id,
            date=query.date,
            appointments=[
                s.AgendaEntryOut(
                    id=e.appointment_id,
                    start=e.start,
                    end=e.end,
                    motive_id=e.motive_id,
                    motive_name=e.motive_name,
                    patient_id=e.patient_id,
                    patient_name=e.patient_name,
                    status=e.status,
                    source=e.source,
                    replaces=e.replaces,
                    replaced_by=e.replaced_by,
                )
                for e in entries
            ],
        )
    )


async def patient_appointments(request: web.Request) -> web.Response:
    patient_id = path_id(request, "patient_id", "patient")
    queries = await consistent(request, "patient_view")
    actor = actor_of(request)
    found, as_of = await services_of(request).read.exactly(
        "patient_view", lambda: queries.patient_appointments(actor, patient_id)
    )
    note(
        request,
        items=[
            disclosed(
                a.appointment_id,
                patient_id=patient_id,
                practitioner_id=a.practitioner_id,
                establishment_id=a.establishment_id,
                fields=PATIENT_APPOINTMENT_FIELDS,
                # The answer names its patient once, at the top (`patient_id`).
                identified=True,
            )
            for a in found
        ],
        patient_ids=[patient_id],
        fields=PATIENT_APPOINTMENT_FIELDS,
        as_of=as_of.position,
        as_of_tx=as_of.tx,
    )
    return reply(
        s.PatientAppointmentsOut(
            patient_id=patient_id,
            appointments=[patient_appointment_out(a) for a in found],
        )
    )
