"""Route handlers: decode, call one use case, render. No SQL here."""

import re
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from aiohttp import web

from domain.agenda import Appointment
from domain.directory import CareRelationship, Patient
from domain.ledger import Disclosure
from domain.values import Absence, BookingPolicy, Motive, OpeningHours, Sex
from infra.http import schemas as s
from infra.http.audit import Access, add, disclosed, note
from infra.http.convert import (
    appointment_out,
    establishment_out,
    patient_out,
    practitioner_out,
)
from infra.http.keys import actor_of, meta_of, services_of
from infra.http.reads import behind
from infra.http.wire import HTTPProblem, path_id, read_body, reply
from infra.readmodels import NotCaughtUp
from infra.repository import log_position
from services.actors import ActorKind


def _hours(hours: list[s.HoursIn]) -> tuple[OpeningHours, ...]:
    return tuple(OpeningHours(h.weekday, h.start, h.end) for h in hours)


# -- establishments ---------------------------------------------------------


async def register_establishment(request: web.Request) -> web.Response:
    body = await read_body(request, s.RegisterEstablishment)
    directory = services_of(request).directory
    saved = await directory.register_establishment(
        actor_of(request), meta_of(request), body.name, body.address, body.city, body.timezone
    )
    found = await directory.establishment(actor_of(request), saved.id)
    return reply(establishment_out(found), 201, saved.position)


# -- practitioners ----------------------------------------------------------


async def register_practitioner(request: web.Request) -> web.Response:
    body = await read_body(request, s.RegisterPractitioner)
    directory = services_of(request).directory
    saved = await directory.register_practitioner(
        actor_of(request),
        meta_of(request),
        name=body.name,
        specialty=body.specialty,
        establishment_id=body.establishment_id,
        policy=BookingPolicy(
            body.policy.min_notice_minutes,
            body.policy.horizon_days,
            body.policy.cancellation_window_minutes,
        ),
        motives=[Motive(m.id, m.name, m.duration_minutes, m.online) for m in body.motives],
        hours=_hours(body.hours),
    )
    found = await directory.practitioner(actor_of(request), saved.id)
    return reply(practitioner_out(found), 201, saved.position)


async def add_motive(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    body = await read_body(request, s.MotiveIn)
    directory = services_of(request).directory
    motive = Motive(body.id, body.name, body.duration_minutes, body.online)
    saved = await directory.add_motive(actor_of(request), meta_of(request), practitioner_id, motive)
    found = await directory.practitioner(actor_of(request), saved.id)
    return reply(practitioner_out(found), 201, saved.position)


async def set_opening_hours(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    body = await read_body(request, s.SetOpeningHours)
    directory = services_of(request).directory
    saved = await directory.set_opening_hours(
        actor_of(request), meta_of(request), practitioner_id, _hours(body.hours)
    )
    found = await directory.practitioner(actor_of(request), saved.id)
    return reply(practitioner_out(found), 200, saved.position)


async def add_absence(request: web.Request) -> web.Response:
    practitioner_id = path_id(request, "practitioner_id", "practitioner")
    body = await read_body(request, s.AddAbsence)
    directory = services_of(request).directory
    saved = await directory.add_absence(
        actor_of(request),
        meta_of(request),
        practitioner_id,
        Absence(body.start, body.end, body.reason),
    )
    found = await directory.practitioner(actor_of(request), saved.id)
    return reply(practitioner_out(found), 201, saved.position)


PATIENT_FIELDS = tuple(s.PatientOut.__struct_fields__)


def _patient_item(patient_id: object, establishment_id: object) -> Disclosure:
    return disclosed(
        patient_id,
        patient_id=patient_id,
        establishment_id=establishment_id,
        fields=PATIENT_FIELDS,
    )


# What each write's answer will disclose of what it saves (Audit.describe):
# the entry appended with the change says it, and the answer needs no other.
# Each mirrors its handler's `note`; one that says less only costs an entry.


async def describe_registration(request: web.Request, saved: Sequence[Any]) -> Access:
    actor = actor_of(request)
    registrar = actor.establishment_id if actor.kind is ActorKind.STAFF else None
    patients = [p for p in saved if isinstance(p, Patient)]
    return add(Access(), items=[_patient_item(p.id, registrar) for p in patients])


async def describe_contact(request: web.Request, saved: Sequence[Any]) -> Access:
    patients = [p for p in saved if isinstance(p, Patient)]
    return add(
        Access(),
        items=[_patient_item(p.id, p.registered_by_establishment) for p in patients],
    )


async def describe_consent(request: web.Request, saved: Sequence[Any]) -> Access:
    items = [
        disclosed(
            r.patient_id,
            patient_id=r.patient_id,
            establishment_id=r.establishment_id,
            fields=("consent",),
        )
        for r in saved
        if isinstance(r, CareRelationship)
    ]
    return add(Access(), items=items)


# The appointment a reschedule replaces: what its answer tells of it.
REPLACED_FIELDS = ("status", "replaced_by", "cancellation_reason")


async def describe_appointments(request: web.Request, saved: Sequence[Any]) -> Access:
    booking, actor = services_of(request).booking, actor_of(request)
    replaced = request.match_info.get("appointment_id") if request.method == "POST" else None
    items = []
    for a in saved:
        if not isinstance(a, Appointment):
            continue
        if a.replaced_by is not None and str(a.id) == replaced:
            fields: Sequence[str] = REPLACED_FIELDS
        else:
            hidden = await booking.hidden_for(actor, a)
            fields = [f for f in APPOINTMENT_FIELDS if f not in hidden]
        items.append(_appointment_item(a, fields))
    return add(Access(), items=items)


# -- patients ---------------------------------------------------------------


async def register_patient(request: web.Request) -> web.Response:
    body = await read_body(request, s.RegisterPatient)
    directory = services_of(request).directory
    saved = await directory.register_patient(
        actor_of(request),
        meta_of(request),
        first_name=body.first_name,
        last_name=body.last_name,
        birth_date=body.birth_date,
        sex=Sex(body.sex),
        email=body.email,
        phone=body.phone,
    )
    # The registration is the change; the answer discloses only the new id.
    actor = actor_of(request)
    registrar = actor.establishment_id if actor.kind is ActorKind.STAFF else None
    note(request, items=[_patient_item(saved.id, registrar)], as_of=saved.position)
    return reply(s.Created(id=saved.id), 201, saved.position)


async def get_patient(request: web.Request) -> web.Response:
    patient_id = path_id(request, "patient_id", "patient")
    found = await services_of(request).directory.patient(actor_of(request), patient_id)
    note(
        request,
        items=[_patient_item(found.id, found.registered_by_establishment)],
        as_of=log_position(found),
    )
    return reply(patient_out(found))


async def change_contact_details(request: web.Request) -> web.Response:
    patient_id = path_id(request, "patient_id", "patient")
    body = await read_body(request, s.ChangeContactDetails)
    directory = services_of(request).directory
    saved = await directory.change_contact_details(
        actor_of(request), meta_of(request), patient_id, body.email, body.phone
    )
    found = await directory.patient(actor_of(request), saved.id)
    note(
        request,
        items=[_patient_item(found.id, found.registered_by_establishment)],
        as_of=log_position(found),
    )
    return reply(patient_out(found), 200, saved.position)


async def give_consent(request: web.Request) -> web.Response:
    patient_id = path_id(request, "patient_id", "patient")
    body = await read_body(request, s.GiveConsent)
    given = await services_of(request).booking.consent_to_bookings(
        actor_of(request),
        meta_of(request),
        patient_id=patient_id,
        establishment_id=body.establishment_id,
    )
    note(
        request,
        items=[
            disclosed(
                patient_id,
                patient_id=patient_id,
                establishment_id=body.establishment_id,
                fields=("consent",),
            )
        ],
        as_of=given.position,
    )
    out = s.ConsentOut(patient_id=patient_id, establishment_id=body.establishment_id)
    return reply(out, 200, given.position or None)


async def erase_patient(request: web.Request) -> web.Response:
    """GDPR Art. 17: the patient themselves, or an admin for the data-protection officer."""
    patient_id = path_id(request, "patient_id", "patient")
    try:
        done = await services_of(request).rights.erase_patient(
            actor_of(request), meta_of(request), patient_id
        )
    except NotCaughtUp as e:  # repeat it: the erasure resumes where it stopped
        raise behind(e, "The patient view has not caught up yet") from None
    note(
        request,
        items=[disclosed(patient_id, patient_id=patient_id)],
        as_of=done.position,
    )
    out = s.ErasureOut(
        patient_id=patient_id,
        erased=True,
        already_erased=done.already,
        cancelled_appointments=list(done.cancelled),
        tokens_revoked=done.tokens_revoked,
    )
    return reply(out, 200, done.position or None)


# -- appointments -----------------------------------------------------------

APPOINTMENT_FIELDS = tuple(s.AppointmentOut.__struct_fields__)


def _masked(shown: s.AppointmentOut, hidden: frozenset[str]) -> s.AppointmentOut:
    return msgspec.structs.replace(shown, patient_id=None) if "patient_id" in hidden else shown


async def _answer(
    request: web.Request, appointment: Appointment, position: int, status: int = 200
) -> web.Response:
    """Render an appointment after a change: masked as a read would be, and noted."""
    hidden = await services_of(request).booking.hidden_for(actor_of(request), appointment)
    _note_appointments(request, [appointment], position, hidden)
    return reply(_masked(appointment_out(appointment), hidden), status, position)


def _note_appointments(
    request: web.Request,
    appointments: list[Appointment],
    as_of: int,
    hidden: frozenset[str] = frozenset(),
) -> None:
    shown = [f for f in APPOINTMENT_FIELDS if f not in hidden]
    note(request, items=[_appointment_item(a, shown) for a in appointments], as_of=as_of)


def _appointment_item(a: Appointment, fields: Sequence[str]) -> Disclosure:
    return disclosed(
        a.id,
        patient_id=a.patient_id,
        practitioner_id=a.practitioner_id,
        establishment_id=a.establishment_id,
        fields=fields,
    )


# A structured-field string, as the IETF Idempotency-Key draft has it.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


async def book(request: web.Request) -> web.Response:
    body = await read_body(request, s.BookAppointment)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise HTTPProblem(
            400,
            "invalid-input",
            "1 to 255 printable ASCII characters",
            field="Idempotency-Key",
        )
    actor = actor_of(request)
    # Whose data this is about, known before the booking is tried: a refusal names them.
    asked_for = body.patient_id or (actor.id if actor.kind is ActorKind.PATIENT else None)
    note(request, record_ids=[], patient_ids=[asked_for])
    booked = await services_of(request).booking.book(
        actor_of(request),
        meta_of(request),
        practitioner_id=body.practitioner_id,
        motive_id=body.motive_id,
        start=body.start,
        end=body.end,
        patient_id=body.patient_id,
        idempotency_key=key,
    )
    # A replay answers the appointment as it is now, so that is what it reflects.
    as_of = log_position(booked.appointment) if booked.replayed else booked.position
    note(request, replay=booked.replayed)
    response = await _answer(request, booked.appointment, as_of, 201)
    response.headers["Location"] = f"/appointments/{booked.appointment.id}"
    if booked.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def get_appointment(request: web.Request) -> web.Response:
    appointment_id = path_id(request, "appointment_id", "appointment")
    found, hidden = await services_of(request).booking.read_appointment(
        actor_of(request), appointment_id
    )
    _note_appointments(request, [found], log_position(found), hidden)
    return reply(_masked(appointment_out(found), hidden))


async def cancel(request: web.Request) -> web.Response:
    appointment_id = path_id(request, "appointment_id", "appointment")
    body = await read_body(request, s.CancelAppointment)
    changed = await services_of(request).booking.cancel(
        actor_of(request), meta_of(request), appointment_id, body.reason
    )
    return await _answer(request, changed.appointment, changed.position)


async def reschedule(request: web.Request) -> web.Response:
    appointment_id = path_id(request, "appointment_id", "appointment")
    body = await read_body(request, s.RescheduleAppointment)
    booked = await services_of(request).booking.reschedule(
        actor_of(request), meta_of(request), appointment_id, body.start
    )
    new = booked.appointment
    # The appointment it replaces changed too: cancelled, pointing at the new one.
    note(
        request,
        items=[
            disclosed(
                appointment_id,
                patient_id=new.patient_id,
                practitioner_id=new.practitioner_id,
                establishment_id=new.establishment_id,
                fields=REPLACED_FIELDS,
            )
        ],
    )
    response = await _answer(request, booked.appointment, booked.position, 201)
    response.headers["Location"] = f"/appointments/{booked.appointment.id}"
    return response


async def _mark(request: web.Request, outcome: str) -> web.Response:
    appointment_id = path_id(request, "appointment_id", "appointment")
    changed = await services_of(request).booking.mark(
        actor_of(request), meta_of(request), appointment_id, outcome
    )
    return await _answer(request, changed.appointment, changed.position)


async def mark_noshow(request: web.Request) -> web.Response:
    return await _mark(request, "noshow")


async def mark_fulfilled(request: web.Request) -> web.Response:
    return await _mark(request, "fulfilled")


# -- operations -------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return reply(s.Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    for name, check in services_of(request).checks.items():
        try:
            checks[name] = await check()
        except Exception as e:  # a failed probe is the answer, not an error
            checks[name] = f"down: {type(e).__name__}"
    database_ok = checks.get("database") == "ok"
    all_ok = all(v == "ok" for v in checks.values())
    status: Literal["ok", "degraded", "unavailable"] = (
        "ok" if all_ok else ("degraded" if database_ok else "unavailable")
    )
    headers = {} if database_ok else {"Retry-After": "5"}
    response = reply(s.Health(status=status, checks=checks), 200 if database_ok else 503)
    response.headers.update(headers)
    return response
