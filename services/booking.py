"""Booking use cases: get the aggregates, call one domain operation, save."""

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NoReturn
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain import agenda
from domain.agenda import AgendaDay, Appointment
from domain.calendar import local_day, require_aware
from domain.credentials import Grant
from domain.directory import (
    Basis,
    CareRelationship,
    Establishment,
    Patient,
    Practitioner,
    known_at,
)
from domain.errors import (
    DomainError,
    Forbidden,
    IdempotencyKeyReused,
    InvalidValue,
    NotFound,
)
from domain.values import Interval, Source
from services.actors import Actor, ActorKind
from services.common import get_or_404, or_404, require, retrying, typed
from services.credentials import scopes_of
from services.policy import Action, Kind, Resource, allowed, decide
from services.ports import Clock, Idempotency, Metadata, Repository, VersionConflict

MAX_AVAILABILITY_DAYS = 31
PLACES_REMEMBERED = 10_000


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


def _grant_id(actor: Actor, practitioner_id: UUID) -> UUID | None:
    """The grant whose scopes an integration holds there (None: others hold none)."""
    if actor.kind is not ActorKind.INTEGRATION:
        return None
    return Grant.create_id(practitioner_id, actor.id)


def _scopes(grant: Grant | None) -> frozenset[str]:
    """As services.credentials.scopes_of answers, from a grant already read."""
    return frozenset(grant.scopes) if grant else frozenset()


class BookingService:
    def __init__(self, repo: Repository, clock: Clock) -> None:
        self.repo = repo
        self.clock = clock
        # Practitioner id -> (establishment id, time zone), which no event ever
        # changes: the ids of a booking's agenda day and care relationship can
        # then be derived before the practitioner is read, and all be read in
        # one round trip. Only a guess: checked against the practitioner read.
        self._places: OrderedDict[UUID, tuple[UUID, str]] = OrderedDict()

    def _place_of(self, practitioner_id: UUID) -> tuple[UUID, str] | None:
        return self._places.get(practitioner_id)

    def _learn_place(self, practitioner: Practitioner) -> tuple[UUID, str]:
        place = (practitioner.establishment_id, practitioner.timezone)
        self._places[practitioner.id] = place
        self._places.move_to_end(practitioner.id)
        while len(self._places) > PLACES_REMEMBERED:
            self._places.popitem(last=False)
        return place

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
        _check_visible(actor, appointment, action, scopes)
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
            # The key is looked up only when the booking does not go through:
            # the append claims it in the same statement as the events, so a
            # booking that commits had no earlier request under that key (and
            # one that had, fails on the claim, or earlier, on its own slot).
            # Whatever the refusal, an earlier answer under the key comes first,
            # as if the key had been looked up before anything else.
            claim = (
                Idempotency(scope, idempotency_key, fingerprint)
                if idempotency_key is not None
                else None
            )

            def once(remembered: bool) -> Awaitable[Booked]:
                return self._book_once(
                    actor,
                    meta,
                    practitioner_id=practitioner_id,
                    patient_id=patient_id,
                    motive_id=motive_id,
                    start=start,
                    end=end,
                    claim=claim,
                    remembered=remembered,
                )

            try:
                try:
                    # Decided on what this process remembers, checked by the
                    # append; a refusal is only given on a read of the log.
                    return await once(remembered=True)
                except DomainError:
                    return await once(remembered=False)
            except (DomainError, VersionConflict):
                if (replayed := await replay()) is not None:
                    return replayed
                raise

        return await retrying(attempt)

    async def _book_once(
        self,
        actor: Actor,
        meta: Metadata,
        *,
        practitioner_id: UUID,
        patient_id: UUID,
        motive_id: str,
        start: datetime,
        end: datetime | None,
        claim: Idempotency | None,
        remembered: bool = False,
    ) -> Booked:
        """One try at a booking: two round trips to read (one when the practitioner's
        place is known; none when `remembered` and the cache holds everything),
        the checks in the order they always ran, one append that also checks
        that nothing read has changed."""
        wanted: list[tuple[type[Aggregate], UUID]] = [
            (Practitioner, practitioner_id),
            (Patient, patient_id),
        ]
        grant_id = _grant_id(actor, practitioner_id)
        if grant_id is not None:
            wanted.append((Grant, grant_id))
        guess = self._place_of(practitioner_id)
        if guess is not None:
            wanted += _context_keys(practitioner_id, patient_id, start, guess)
        found = await self.repo.get_many(wanted, remembered=remembered)
        practitioner = or_404(Practitioner, found[0], "practitioner_id")
        patient = typed(Patient, found[1])
        grant = typed(Grant, found[2]) if grant_id is not None else None
        scopes = _scopes(grant) if grant_id is not None else frozenset()
        place = self._learn_place(practitioner)
        if place == guess:
            relationship_found, day_found = found[-2], found[-1]
        else:
            keys = _context_keys(practitioner_id, patient_id, start, place)
            relationship_found, day_found = await self.repo.get_many(keys, remembered=remembered)
        establishment_id = practitioner.establishment_id
        relationship = typed(CareRelationship, relationship_found)
        known = patient is not None and known_at(establishment_id, patient, relationship)
        resource = Resource(
            Kind.APPOINTMENT, patient_id, practitioner.id, establishment_id, patient_known=known
        )
        # A stranger, someone else or no one at all: one answer, so that
        # booking never tells whether a patient id exists.
        require(actor, Action.BOOK, resource, "patient_id", "patient", scopes)
        if patient is None:
            raise NotFound("no such patient", field="patient_id")
        patient.require_not_erased()  # nothing new is booked for an erased patient
        motive = practitioner.motive(motive_id)
        slot_end = end or start + timedelta(minutes=motive.duration_minutes)
        practitioner.check_bookable(
            motive, Interval(start, slot_end), self.clock.now(), actor.source
        )
        day = _day_or_new(practitioner, start, day_found)
        # SlotTaken here may be our own first attempt under this key, committed
        # since: the caller then answers as that attempt did.
        appointment = agenda.book(
            day,
            patient_id=patient_id,
            establishment_id=establishment_id,
            motive_id=motive.id,
            duration_minutes=motive.duration_minutes,
            start=start,
            end=slot_end,
            source=actor.source,
        )
        if claim is not None:
            claim = Idempotency(claim.scope, claim.key, claim.request_hash, str(appointment.id))
        changed: list[Aggregate] = [day, appointment]
        if relationship is None:
            # The first booking there makes the patient known to that practice;
            # a concurrent first booking conflicts on it and is retried.
            changed.append(CareRelationship.start(establishment_id, patient_id, Basis.BOOKED))
        relied_on = [practitioner, patient, grant, relationship]
        position = await self.repo.save(changed, meta, claim, relied_on=relied_on)
        return Booked(appointment, position)

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
            patient = await get_or_404(self.repo, Patient, patient_id, "patient_id")
            patient.require_not_erased()  # nothing new for an erased patient (410)
            await get_or_404(self.repo, Establishment, establishment_id, "establishment_id")
            relationship_id = CareRelationship.create_id(establishment_id, patient_id)
            if await self.repo.get(CareRelationship, relationship_id) is not None:
                return Consented(relationship_id, 0)
            relationship = CareRelationship.start(establishment_id, patient_id, Basis.CONSENTED)
            # Checked against the log as it was read: an erasure meanwhile refuses it.
            position = await self.repo.save([relationship], meta, relied_on=[patient])
            return Consented(relationship.id, position)

        return await retrying(attempt)

    async def _changing(
        self, actor: Actor, appointment_id: UUID, action: Action, also: datetime | None = None
    ) -> tuple[Appointment, Practitioner, AgendaDay, AgendaDay]:
        """The appointment (if this actor may do `action` to it), its practitioner, and
        the agenda days of its start and of `also` (the same object on the same day).

        Two round trips (three when the practitioner's place is not known yet);
        the checks run in the order they always did.
        """
        appointment = await self.repo.get(Appointment, appointment_id)
        if appointment is None:
            raise_not_found()
        practitioner_id = appointment.practitioner_id
        starts = [appointment.start] if also is None else [appointment.start, also]
        wanted: list[tuple[type[Aggregate], UUID]] = [(Practitioner, practitioner_id)]
        grant_id = _grant_id(actor, practitioner_id)
        if grant_id is not None:
            wanted.append((Grant, grant_id))
        guess = self._place_of(practitioner_id)
        if guess is not None:
            wanted += _day_keys(practitioner_id, guess[1], starts)
        found = await self.repo.get_many(wanted)
        scopes = _scopes(typed(Grant, found[1])) if grant_id is not None else frozenset()
        _check_visible(actor, appointment, action, scopes)
        practitioner = or_404(Practitioner, found[0], "practitioner_id")
        place = self._learn_place(practitioner)
        if place == guess:
            days_found = found[2 if grant_id is not None else 1 :]
        else:
            days_found = await self.repo.get_many(_day_keys(practitioner_id, place[1], starts))
        timezone = practitioner.timezone
        dates = _local_dates(starts, timezone)
        days = {
            d: typed(AgendaDay, f) or AgendaDay(practitioner_id=practitioner_id, day=d)
            for d, f in zip(dates, days_found, strict=True)
        }
        first = days[local_day(starts[0], timezone)]
        last = days[local_day(starts[-1], timezone)]
        return appointment, practitioner, first, last

    async def cancel(
        self, actor: Actor, meta: Metadata, appointment_id: UUID, reason: str
    ) -> Changed:
        async def attempt() -> Changed:
            appointment, practitioner, day, _ = await self._changing(
                actor, appointment_id, Action.CANCEL
            )
            if actor.source is Source.PATIENT:
                practitioner.check_patient_may_cancel(appointment.start, self.clock.now())
            agenda.cancel(appointment, day, reason, actor.source)
            position = await self.repo.save([day, appointment], meta)
            return Changed(appointment, position)

        return await retrying(attempt)

    async def reschedule(
        self, actor: Actor, meta: Metadata, appointment_id: UUID, start: datetime
    ) -> Booked:
        start = require_aware(start, "start")

        async def attempt() -> Booked:
            old, practitioner, old_day, new_day = await self._changing(
                actor, appointment_id, Action.RESCHEDULE, also=start
            )
            patient = await get_or_404(self.repo, Patient, old.patient_id, "patient_id")
            patient.require_not_erased()  # a new appointment for an erased patient: 410
            now = self.clock.now()
            if actor.source is Source.PATIENT:
                practitioner.check_patient_may_cancel(old.start, now)
            motive = practitioner.motive(old.motive_id)
            end = start + timedelta(minutes=motive.duration_minutes)
            practitioner.check_bookable(motive, Interval(start, end), now, actor.source)
            new = agenda.reschedule(
                old,
                old_day,
                new_day,
                duration_minutes=motive.duration_minutes,
                start=start,
                end=end,
                by=actor.source,
            )
            days = [old_day] if new_day is old_day else [old_day, new_day]
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


def _day_key(practitioner_id: UUID, timezone: str, start: datetime) -> tuple[type[AgendaDay], UUID]:
    return AgendaDay, AgendaDay.create_id(practitioner_id, local_day(start, timezone))


def _local_dates(starts: list[datetime], timezone: str) -> list[date]:
    """The distinct local dates of these instants, in order."""
    return list(dict.fromkeys(local_day(s, timezone) for s in starts))


def _day_keys(
    practitioner_id: UUID, timezone: str, starts: list[datetime]
) -> list[tuple[type[Aggregate], UUID]]:
    """The agenda days of these instants' distinct local dates, in order."""
    return [
        (AgendaDay, AgendaDay.create_id(practitioner_id, d)) for d in _local_dates(starts, timezone)
    ]


def _check_visible(
    actor: Actor, appointment: Appointment, action: Action, scopes: frozenset[str]
) -> None:
    """NotFound if the actor may not read the appointment; Forbidden if it may read
    it but not do `action` to it (as _visible)."""
    if not allowed(actor, Action.READ, _resource(appointment), scopes):
        raise_not_found()
    if not allowed(actor, action, _resource(appointment), scopes):
        raise Forbidden(f"{actor.kind.value}s cannot {action.value} appointments")


def _day_or_new(practitioner: Practitioner, start: datetime, found: object) -> AgendaDay:
    day = typed(AgendaDay, found)
    if day is not None:
        return day
    return AgendaDay(practitioner_id=practitioner.id, day=local_day(start, practitioner.timezone))


def _context_keys(
    practitioner_id: UUID, patient_id: UUID, start: datetime, place: tuple[UUID, str]
) -> list[tuple[type[Aggregate], UUID]]:
    """What a booking reads besides the practitioner: the care relationship at its
    establishment, then the agenda day of `start` in its time zone."""
    establishment_id, timezone = place
    return [
        (CareRelationship, CareRelationship.create_id(establishment_id, patient_id)),
        _day_key(practitioner_id, timezone, start),
    ]


def raise_not_found() -> NoReturn:
    raise NotFound("no such appointment", field="appointment_id")
