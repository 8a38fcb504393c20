"""The log replayed to a past point: what a record held when it was disclosed.

DESIGN decision 11: the ledger keeps no value it disclosed, only the position
(and, for a read model, the checkpoint) its answer reflected. This rebuilds
the values from the log, exactly as the answer rendered them:

- an aggregate read (`GET /appointments/{id}`, `GET /patients/{id}`, and the
  answers to changes) reflected the aggregate's events at or before `as_of`;
- a read-model read (an agenda, a patient's appointments) reflected the rows
  of a read model at checkpoint (`as_of_tx`, `as_of`): the events at or
  before it in (tx, position) order. Those rows took the names they join
  (patient, motive, practitioner, establishment) as they were when the
  booking was applied, so those come from that moment.

An aggregate's events are read and decoded once per PointInTime, and folded
to each point asked for; a scope over thousands of records costs one read
per aggregate (fewer with `prefetch`), not one replay per entry.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from eventsourcing.domain import Aggregate

from domain.agenda import Appointment
from domain.directory import Establishment, Patient, Practitioner
from domain.ledger import ANCHOR_ID, Disclosure, shard_number
from infra.codec import TypedMapper
from infra.deadlines import bounded
from infra.decoder import Decoder
from infra.eventstore import Checkpoint, EventStore, RecordedEvent
from infra.http import schemas as s
from infra.http.convert import appointment_out, patient_fields
from projections.base import storable

CONTACT = ("first_name", "last_name", "birth_date", "sex", "email", "phone")
# Fields only a patient's list of appointments shows: an item with one of them
# came from GET /patients/{id}/appointments, not from an appointment read.
_PATIENT_VIEW_ONLY = frozenset(s.PatientAppointmentOut.__struct_fields__) - frozenset(
    s.AppointmentOut.__struct_fields__
)
PREFETCH_CHUNK = 500


class Cut:
    """A point in the log: a position, or a read model's checkpoint (tx > 0)."""

    __slots__ = ("position", "tx")

    def __init__(self, position: int, tx: int = 0) -> None:
        self.position, self.tx = position, tx

    def includes(self, event: RecordedEvent) -> bool:
        if self.tx:
            return (event.tx, event.position) <= (self.tx, self.position)
        return event.position <= self.position

    @staticmethod
    def before(event: RecordedEvent) -> "Cut":
        """Everything a read model had applied when it came to `event` (not `event` itself)."""
        return Cut(event.position - 1, event.tx) if event.position > 1 else Cut(0, 0)


class _History:
    """One aggregate's events, decoded once; its state folded to any cut, cached."""

    def __init__(self, events: list[tuple[RecordedEvent, Any]]) -> None:
        self.events = events
        self._folded: dict[int, Aggregate | None] = {}

    def at(self, cut: Cut) -> Aggregate | None:
        included = [cut.includes(r) for r, _ in self.events]
        count = sum(included)
        if all(included[:count]):  # a prefix, as it is unless a writer's tx began early
            if count not in self._folded:
                self._folded[count] = self._fold(e for _, e in self.events[:count])
            return self._folded[count]
        return self._fold(e for (_, e), keep in zip(self.events, included, strict=True) if keep)

    @staticmethod
    def _fold(events: Iterable[Any]) -> Aggregate | None:
        aggregate = None
        for event in events:
            aggregate = event.mutate(aggregate)
        return aggregate


def _utc(value: datetime) -> datetime:
    """As a timestamptz column gives it back: the same instant, in UTC."""
    return value.astimezone(UTC)


def _text(value: str | None) -> str | None:
    """As a read model stored it (projections.base.storable)."""
    return None if value is None else storable(value)


class PostgresPointInTime:
    """The PointInTime port on the Postgres log."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        mapper: TypedMapper | None = None,
        deadline: float = 30.0,
    ) -> None:
        self.store = EventStore(pool)
        self.decoder = Decoder(mapper)
        self.deadline = deadline  # seconds for one read of the log
        self._histories: dict[UUID, _History] = {}

    async def prefetch(self, aggregate_ids: Iterable[object]) -> None:
        """Load these aggregates (appointments, patients…) in a few reads instead of one each.

        Appointments named here bring their patient, practitioner and establishment.
        """
        wanted = [
            i
            for i in map(_uuid, aggregate_ids)
            if i and not _ledger(i) and i not in self._histories
        ]
        await self._load(wanted)
        booked = [h.events[0][1] for i in wanted if (h := self._histories[i]).events]
        related = {
            getattr(e, name)
            for e in booked
            if type(e).__qualname__ == "Appointment.Booked"
            for name in ("patient_id", "practitioner_id", "establishment_id")
        }
        await self._load([i for i in related if i not in self._histories])

    async def _load(self, ids: list[UUID]) -> None:
        for start in range(0, len(ids), PREFETCH_CHUNK):
            chunk = ids[start : start + PREFETCH_CHUNK]
            found: dict[UUID, list[tuple[RecordedEvent, Any]]] = {i: [] for i in chunk}
            rows = await bounded(self.store.read_aggregates(chunk), self.deadline)
            for r in rows:
                found[r.originator_id].append((r, self.decoder.decode(r)))
            for i, events in found.items():
                self._histories[i] = _History(events)

    async def _history(self, aggregate_id: UUID) -> _History:
        if aggregate_id not in self._histories:
            await self._load([aggregate_id])
        return self._histories[aggregate_id]

    async def _at(self, cls: type[Aggregate], aggregate_id: object, cut: Cut) -> Any:
        """The aggregate as of `cut`, or None (no such thing then, or of another kind)."""
        uid = _uuid(aggregate_id)
        if uid is None or _ledger(uid):  # the ledger is no record, and too long to load
            return None
        found = (await self._history(uid)).at(cut)
        return found if isinstance(found, cls) else None

    async def _booking(self, appointment_id: object, cut: Cut) -> tuple[Appointment, Cut] | None:
        """The appointment at `cut`, and the point its Booked event was applied at."""
        appointment = await self._at(Appointment, appointment_id, cut)
        if appointment is None:
            return None
        booked = (await self._history(appointment.id)).events[0][0]
        return appointment, Cut.before(booked)

    async def values(
        self, resource_type: str, item: Disclosure, as_of: int, as_of_tx: int = 0
    ) -> dict[str, object]:
        """The disclosed fields of `item` as the answer carried them, rebuilt by replay."""
        cut = Cut(as_of, as_of_tx)
        shown: dict[str, object] | None = None
        if resource_type == "agenda":
            shown = await self._agenda_entry(item.record_id, cut)
        elif resource_type == "appointment" and _PATIENT_VIEW_ONLY & set(item.fields):
            shown = await self._patient_appointment(item.record_id, cut)
        elif resource_type == "appointment":
            appointment = await self._at(Appointment, item.record_id, cut)
            shown = appointment and msgspec.to_builtins(appointment_out(appointment))
        elif resource_type == "patient":
            patient = await self._at(Patient, item.record_id, cut)
            shown = patient and patient_fields(patient)
        if not shown:
            return {}
        return {f: shown[f] for f in item.fields if f in shown}

    async def contact(self, patient_id: str, as_of: int) -> dict[str, object] | None:
        """The patient's identity and contact details at that position, or None if unknown."""
        patient = await self._at(Patient, patient_id, Cut(as_of))
        if patient is None:
            return None
        rendered = patient_fields(patient)
        return {f: rendered[f] for f in CONTACT}

    async def _agenda_entry(self, record_id: str, cut: Cut) -> dict[str, object] | None:
        """A line of the `agenda` read model (projections/agenda.py) at checkpoint `cut`."""
        found = await self._booking(record_id, cut)
        if found is None:
            return None
        a, booked = found
        # The row is inserted only if the practitioner was known; the names are joined then.
        practitioner = await self._at(Practitioner, a.practitioner_id, booked)
        if practitioner is None:
            return None
        patient = await self._at(Patient, a.patient_id, booked)
        motive = practitioner.motives.get(a.motive_id)
        entry = s.AgendaEntryOut(
            id=a.id,
            start=_utc(a.start),
            end=_utc(a.end),
            motive_id=a.motive_id,
            motive_name=_text(motive.name) if motive else None,
            patient_id=a.patient_id,
            patient_name=_text(patient.display_name) if patient else None,
            status=a.status.value,
            source=a.source.value,
            replaces=a.replaces,
            replaced_by=a.replaced_by,
        )
        return msgspec.to_builtins(entry)

    async def _patient_appointment(self, record_id: str, cut: Cut) -> dict[str, object] | None:
        """A line of the `patient_view` read model (projections/patient_view.py) at `cut`."""
        found = await self._booking(record_id, cut)
        if found is None:
            return None
        a, booked = found
        practitioner = await self._at(Practitioner, a.practitioner_id, booked)
        place = await self._at(Establishment, a.establishment_id, booked)
        line = s.PatientAppointmentOut(
            id=a.id,
            practitioner_id=a.practitioner_id,
            practitioner_name=_text(practitioner.name) if practitioner else None,
            specialty=_text(practitioner.specialty) if practitioner else None,
            establishment_id=a.establishment_id,
            establishment_name=_text(place.name) if place else None,
            address=_text(place.address) if place else None,
            city=_text(place.city) if place else None,
            motive_id=a.motive_id,
            start=_utc(a.start),
            end=_utc(a.end),
            status=a.status.value,
            replaces=a.replaces,
            replaced_by=a.replaced_by,
        )
        return msgspec.to_builtins(line)


def _ledger(aggregate_id: UUID) -> bool:
    """Whether the id is one of the ledger's chains (a shard, or the anchors)."""
    return aggregate_id == ANCHOR_ID or shard_number(aggregate_id) is not None


def _uuid(value: object) -> UUID | None:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None


__all__ = ["CONTACT", "Checkpoint", "Cut", "PostgresPointInTime"]
