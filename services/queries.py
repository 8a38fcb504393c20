"""Read use cases, answered from read models (never by loading aggregates)."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from uuid import UUID

from domain.calendar import free_slots, opening_intervals
from domain.errors import Forbidden, InvalidValue, NotFound
from domain.ledger import AccessRecord
from domain.values import Interval, Motive
from services.actors import Actor, ActorKind
from services.common import require
from services.policy import Action, Kind, Resource, allowed
from services.ports import (
    AccessLogEntry,
    AgendaEntry,
    Clock,
    EstablishmentRow,
    LedgerQuery,
    PatientAppointment,
    PractitionerRow,
    ReadModels,
)

MAX_DAYS = 31
MAX_RESULTS = 50


@dataclass(frozen=True)
class Offer:
    """A practitioner's free slots for one motive."""

    practitioner: PractitionerRow
    motive: Motive
    slots: list[Interval]


def _check_range(first: date, last: date) -> None:
    if last < first:
        raise InvalidValue("must not be before `from`", field="to")
    if (last - first).days >= MAX_DAYS:
        raise InvalidValue(f"at most {MAX_DAYS} days", field="to")


@dataclass(frozen=True)
class AgendaView:
    """A practitioner's day as one actor may see it."""

    establishment_id: UUID
    entries: list[AgendaEntry]
    hidden: frozenset[str]  # the fields this actor may not see: blank them


ScopeLookup = Callable[[Actor, UUID], Awaitable[frozenset[str]]]


async def _no_scopes(actor: Actor, practitioner_id: UUID) -> frozenset[str]:
    return frozenset()


class QueryService:
    def __init__(self, read: ReadModels, clock: Clock, scopes: ScopeLookup = _no_scopes) -> None:
        self.read = read
        self.clock = clock
        self.scopes = scopes

    async def establishment(self, actor: Actor, establishment_id: UUID) -> EstablishmentRow:
        require(actor, Action.READ, Resource(Kind.ESTABLISHMENT), "establishment_id")
        found = await self.read.establishment(establishment_id)
        if found is None:
            raise NotFound("no such establishment", field="establishment_id")
        return found

    async def establishments(self, actor: Actor, city: str | None) -> list[EstablishmentRow]:
        require(actor, Action.READ, Resource(Kind.ESTABLISHMENT), "city")
        return await self.read.establishments(city, MAX_RESULTS)

    async def practitioner(self, actor: Actor, practitioner_id: UUID) -> PractitionerRow:
        require(actor, Action.READ, Resource(Kind.PRACTITIONER), "practitioner_id")
        found = await self.read.practitioners("directory", ids=[practitioner_id])
        if not found:
            raise NotFound("no such practitioner", field="practitioner_id")
        return found[0]

    async def practitioners(
        self, actor: Actor, specialty: str | None, city: str | None
    ) -> list[PractitionerRow]:
        require(actor, Action.READ, Resource(Kind.PRACTITIONER), "specialty")
        return await self.read.practitioners(
            "directory", specialty=specialty, city=city, limit=MAX_RESULTS
        )

    async def offers(
        self,
        actor: Actor,
        first: date,
        last: date,
        *,
        practitioner_id: UUID | None = None,
        specialty: str | None = None,
        city: str | None = None,
        motive_id: str | None = None,
    ) -> list[Offer]:
        """Free slots by practitioner, for one motive (or each one's first bookable one)."""
        _check_range(first, last)
        require(actor, Action.READ, Resource(Kind.AVAILABILITY), "practitioner_id")
        practitioners = await self.read.practitioners(
            "availability",
            ids=[practitioner_id] if practitioner_id else None,
            specialty=specialty,
            city=city,
            limit=MAX_RESULTS,
        )
        if practitioner_id and not practitioners:
            raise NotFound("no such practitioner", field="practitioner_id")
        # A day's bookings are filed under the local date; widen by a day each
        # side so zone offsets never hide one.
        booked = await self.read.booked(
            [p.id for p in practitioners], first - timedelta(days=1), last + timedelta(days=1)
        )
        now = self.clock.now()
        patient = actor.source.value == "patient"
        offers = []
        for p in practitioners:
            motive = self._motive(p, motive_id, patient, strict=practitioner_id is not None)
            if motive is None:
                continue
            slots = []
            earliest = now + timedelta(minutes=p.policy.min_notice_minutes)
            latest = now + timedelta(days=p.policy.horizon_days)
            day = first
            while day <= last:
                slots += free_slots(
                    opening_intervals(p.hours, day, p.timezone),
                    timedelta(minutes=motive.duration_minutes),
                    booked.get(p.id, []),
                    p.absences,
                    earliest,
                    latest,
                )
                day += timedelta(days=1)
            offers.append(Offer(p, motive, slots))
        return offers

    @staticmethod
    def _motive(
        p: PractitionerRow, motive_id: str | None, patient: bool, strict: bool
    ) -> Motive | None:
        bookable = [m for m in p.motives if m.online or not patient]
        if motive_id is None:
            return bookable[0] if bookable else None
        found = next((m for m in p.motives if m.id == motive_id), None)
        if found is None and strict:
            raise NotFound("no such motive for this practitioner", field="motive_id")
        return found if found in bookable else None

    async def agenda(self, actor: Actor, practitioner_id: UUID, day: date) -> AgendaView:
        """The day's entries, whose establishment they are, and what to blank."""
        found = await self.read.agenda(practitioner_id, day)
        establishment_id, entries = found if found else (None, [])
        resource = Resource(
            Kind.AGENDA, practitioner_id=practitioner_id, establishment_id=establishment_id
        )
        if establishment_id is None:
            raise NotFound("no such practitioner", field="practitioner_id")
        scopes = await self.scopes(actor, practitioner_id)
        decision = require(actor, Action.READ, resource, "practitioner_id", "practitioner", scopes)
        return AgendaView(establishment_id, entries, decision.hidden)

    async def patient_appointments(
        self, actor: Actor, patient_id: UUID
    ) -> list[PatientAppointment]:
        require(actor, Action.READ, Resource(Kind.PATIENT, patient_id=patient_id), "patient_id")
        return await self.read.patient_appointments(patient_id)

    async def access_log(self, actor: Actor) -> list[AccessLogEntry]:
        """GET /me/access-log: only a patient has one, and only their own."""
        if actor.kind is not ActorKind.PATIENT or not allowed(
            actor, Action.READ, Resource(Kind.ACCESS_LOG, patient_id=actor.id)
        ):
            raise Forbidden("only a patient's own token reads their access log")
        return await self.read.access_log(actor.id, 500)

    async def ledger(self, actor: Actor, query: LedgerQuery) -> list[tuple[int, AccessRecord]]:
        """The access ledger, for the data-protection team (and admins)."""
        if not allowed(actor, Action.READ, Resource(Kind.ACCESS_LOG)):
            raise Forbidden("only analysts read the access ledger")
        return await self.read.ledger_entries(query)
