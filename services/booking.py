"""Booking use cases: get the aggregates, call one domain operation, save."""

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn
from uuid import UUID

from domain import agenda
from domain.agenda import AgendaDay, Appointment
from domain.calendar import local_day, require_aware
from domain.directory import (
    Basis,
    CareRelationship,
    Establishment,
    Patient,
    Practitioner,
    known_at,
)
from domain.errors import Forbidden, IdempotencyKeyReused, InvalidValue, NotFound, SlotTaken
from domain.values import Interval, Source
from services.actors import Actor, ActorKind
from services.common import get_or_404, require, retrying
from services.credentials import scopes_of
from services.policy import Action, Kind, Resource, allowed, decide
from services.ports import Clock, Idempotency, Metadata, Repository

MAX_AVAILABILITY_DAYS = 31


@dataclass(frozen=True)
class Booked:
    appointment: Appointment
    position: int
    replayed: bool = False


@dataclass(frozen=True)
class Changed:
    appointment: Appointment
    position: int


@dataclass(frozen=True)
class Consented:
    relationship_id: UUID
    position: int  # 0 when the establishment already knew the patient


def _resource(a: Appointment) -> Resource:
    return Resource(Kind.APPOINTMENT, a.patient_id, a.practitioner_id, a.establishment_id)


def request_hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


class BookingService:
    def __init__(self, repo: Repository, clock: Clock) -> None:
        self.repo = repo
        self.clock = clock

    async def _day(self, practitioner: Practitioner, start: datetime) -> AgendaDay:
        day = local_day(start, practitioner.timezone)
        found = await self.repo.get(AgendaDay, AgendaDay.create_id(practitioner.id, day))
        return found or AgendaDay(practitioner_id=practitioner.id, day=day)

    async def read_appointment(
        self, actor: Actor, appointment_id: UUID
    ) -> tuple[Appointment, frozenset[str]]:
        """The appointment and the fields this actor must not see, or NotFound."""
        appointment, scopes = await self._readable(actor, appointment_id)
        return appointment, decide(actor, Action.READ, _resource(appointment), scopes).hidden

    async def _readable(
        self, actor: Actor, appointment_id: UUID
    ) -> tuple[Appointment, frozenset[str]]:
        """The appointment if this actor may read it (else NotFound), and its scopes."""
        appointment = await self.repo.get(Appointment, appointment_id)
        if appointment is None:
            raise_not_found()
        scopes = await scopes_of(self.repo, actor, appointment.practitioner_id)
        if not allowed(actor, Action.READ, _resource(appointment), scopes):
            raise_not_found()
        return appointment, scopes

    async def hidden_for(self, actor: Actor, appointment: Appointment) -> frozenset[str]:
        """The fields of this appointment the actor may not see (integrations' masks)."""
        if actor.kind is not ActorKind.INTEGRATION:
            return frozenset()
        scopes = await scopes_of(self.repo, actor, appointment.practitioner_id)
        return decide(actor, Action.READ, _resource(appointment), scopes).hidden

    async def get_appointment(self, actor: Actor, appointment_id: UUID) -> Appointment:
        return (await self.read_appointment(actor, appointment_id))[0]

    async def _visible(self, actor: Actor, appointment_id: UUID, action: Action) -> Appointment:
        appointment, scopes = await self._readable(actor, appointment_id)
        if not allowed(actor, action, _resource(appointment), scopes):
            raise Forbidden(f"{actor.kind.value}s cannot {action.value} appointments")
        return appointment

    async def book(
        self,
        actor: Actor,
        meta: Metadata,
        *,
        practitioner_id: UUID,
        motive_id: str,
        start: datetime,
        patient_id: UUID | None = None,
        end: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Booked:
        start = require_aware(start, "start")
        end = require_aware(end, "end") if end is not None else None
        if patient_id is None:
            if actor.kind is not ActorKind.PATIENT:
                raise InvalidValue("required unless a patient books for themself", "patient_id")
            patient_id = actor.id
        fingerprint = request_hash(practitioner_id, motive_id, start, end, patient_id)
        scope = f"{actor.kind.value}:{actor.id}:book"

        async def replay() -> Booked | None:
            if idempotency_key is None:
                return None
            earlier = await self.repo.idempotent_result(scope, idempotency_key)
            if earlier is None:
                return None
            if earlier.request_hash != fingerprint:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used for another request",
                    field="Idempotency-Key",
                )
            first = await self.get_appointment(actor, UUID(earlier.result))
            return Booked(first, earlier.position, replayed=True)

        async def attempt() -> Booked:
            if (replayed := await replay()) is not None:
                return replayed
            practitioner = await get_or_404(
                self.repo, Practitioner, practitioner_id, "practitioner_id"
            )
            place = practitioner.establishment_id
            scopes = await scopes_of(self.repo, actor, practitioner.id)
            patient = await self.repo.get(Patient, patient_id)
            relationship = await self.repo.get(
                CareRelationship, CareRelationship.create_id(place, patient_id)
            )
            known = patient is not None and known_at(place, patient, relationship)
            resource = Resource(
                Kind.APPOINTMENT, patient_id, practitioner.id, place, patient_known=known
            )
            # A stranger, someone else or no one at all: one answer, so that
            # booking never tells whether a patient id exists.
            require(actor, Action.BOOK, resource, "patient_id", "patient", scopes)
            if patient is None:
                raise NotFound("no such patient", field="patient_id")
            motive = practitioner.motive(motive_id)
            slot_end = end or start + timedelta(minutes=motive.duration_minutes)
            practitioner.check_bookable(
                motive, Interval(start, slot_end), self.clock.now(), actor.source
            )
            day = await self._day(practitioner, start)
            try:
                appointment = agenda.book(
                    day,
                    patient_id=patient_id,
                    establishment_id=practitioner.establishment_id,
                    motive_id=motive.id,
                    duration_minutes=motive.duration_minutes,
                    start=start,
                    end=slot_end,
                    source=actor.source,
                )
            except SlotTaken:
                # The slot may be taken by our own first attempt under this key,
                # committed since we looked: answer as that attempt did.
                if (replayed := await replay()) is not None:
                    return replayed
                raise
            claim = (
                Idempotency(scope, idempotency_key, fingerprint, str(appointment.id))
                if idempotency_key is not None
                else None
            )
            changed = [day, appointment]
            if relationship is None:
                # The first booking there makes the patient known to that practice;
                # a concurrent first booking conflicts on it and is retried.
                changed.append(CareRelationship.start(place, patient_id, Basis.BOOKED))
            position = await self.repo.save(changed, meta, claim)
            return Booked(appointment, position)

        return await retrying(attempt)

    async def consent_to_bookings(
        self, actor: Actor, meta: Metadata, *, patient_id: UUID, establishment_id: UUID
    ) -> Consented:
        """The patient lets an establishment's practice book for them (position 0 if it
        already knew them through a booking or an earlier consent)."""

        async def attempt() -> Consented:
            require(
                actor,
                Action.MANAGE,
                Resource(Kind.PATIENT, patient_id=patient_id),
                "patient_id",
                "patient",
            )
            await get_or_404(self.repo, Patient, patient_id, "patient_id")
            await get_or_404(self.repo, Establishment, establishment_id, "establishment_id")
            relationship_id = CareRelationship.create_id(establishment_id, patient_id)
            if await self.repo.get(CareRelationship, relationship_id) is not None:
                return Consented(relationship_id, 0)
            relationship = CareRelationship.start(establishment_id, patient_id, Basis.CONSENTED)
            return Consented(relationship.id, await self.repo.save([relationship], meta))

        return await retrying(attempt)

    async def cancel(
        self, actor: Actor, meta: Metadata, appointment_id: UUID, reason: str
    ) -> Changed:
        async def attempt() -> Changed:
            appointment = await self._visible(actor, appointment_id, Action.CANCEL)
            practitioner = await get_or_404(
                self.repo, Practitioner, appointment.practitioner_id, "practitioner_id"
            )
            if actor.source is Source.PATIENT:
                practitioner.check_patient_may_cancel(appointment.start, self.clock.now())
            day = await self._day(practitioner, appointment.start)
            agenda.cancel(appointment, day, reason, actor.source)
            position = await self.repo.save([day, appointment], meta)
            return Changed(appointment, position)

        return await retrying(attempt)

    async def reschedule(
        self, actor: Actor, meta: Metadata, appointment_id: UUID, start: datetime
    ) -> Booked:
        start = require_aware(start, "start")

        async def attempt() -> Booked:
            old = await self._visible(actor, appointment_id, Action.RESCHEDULE)
            practitioner = await get_or_404(
                self.repo, Practitioner, old.practitioner_id, "practitioner_id"
            )
            now = self.clock.now()
            if actor.source is Source.PATIENT:
                practitioner.check_patient_may_cancel(old.start, now)
            motive = practitioner.motive(old.motive_id)
            end = start + timedelta(minutes=motive.duration_minutes)
            practitioner.check_bookable(motive, Interval(start, end), now, actor.source)
            old_day = await self._day(practitioner, old.start)
            same_day = local_day(start, practitioner.timezone) == old_day.day
            new_day = old_day if same_day else await self._day(practitioner, start)
            new = agenda.reschedule(
                old,
                old_day,
                new_day,
                duration_minutes=motive.duration_minutes,
                start=start,
                end=end,
                by=actor.source,
            )
            days = [old_day] if same_day else [old_day, new_day]
            position = await self.repo.save([*days, old, new], meta)
            return Booked(new, position)

        return await retrying(attempt)

    async def mark(
        self, actor: Actor, meta: Metadata, appointment_id: UUID, outcome: str
    ) -> Changed:
        async def attempt() -> Changed:
            appointment = await self._visible(actor, appointment_id, Action.MARK)
            if outcome == "noshow":
                appointment.mark_noshow(self.clock.now())
            else:
                appointment.mark_fulfilled(self.clock.now())
            position = await self.repo.save([appointment], meta)
            return Changed(appointment, position)

        return await retrying(attempt)


def raise_not_found() -> NoReturn:
    raise NotFound("no such appointment", field="appointment_id")
