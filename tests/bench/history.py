"""A realistic log, written fast: for the benchmarks that read it back ([5] rebuild, [6] relay).

The events are the domain's own, made by its aggregates and mapped by the TypedMapper, in
the shapes the services append them: establishments, practitioners (registered, two
motives, opening hours), patients, then bookings (`AgendaDay.Opened` on a day's first
booking, `AgendaDay.SlotReserved`, `Appointment.Booked`) with one in ten cancelled a little
later (`Appointment.Cancelled`, `AgendaDay.SlotReleased`). They go straight through
EventStore.append, skipping the services' reads and checks, `per_append` bookings to a
transaction, from `concurrency` tasks that each own their practitioners' agendas.
"""

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from domain import agenda
from domain.agenda import AgendaDay, Appointment
from domain.directory import Establishment, Patient, Practitioner
from domain.values import BookingPolicy, Motive, Sex, Source
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from services.ports import Metadata
from tests.bench.append import META
from tests.bench.common import say
from tests.world import HOURS

ESTABLISHMENTS = 4
PRACTITIONERS = 40
PATIENTS = 400
MOTIVES = (Motive("consultation", "Consultation", 20), Motive("long", "Long visit", 40))
FIRST_DAY = date(2026, 12, 2)
TZ = "Europe/Paris"
CITIES = ("Paris", "Lyon", "Marseille", "Lille")


class Writer:
    """Maps the pending events of aggregates and appends them in order."""

    def __init__(self, pool: asyncpg.Pool, meta: Metadata = META) -> None:
        self.store = EventStore(pool)
        # Personal fields sealed when the pool has a keyring, as the repository does.
        self.mapper = TypedMapper(self.store.keyring)
        self.meta = meta
        self.pending: list[StoredEvent] = []
        self.appended = 0

    async def take(self, *aggregates: Aggregate) -> None:
        self.pending += await self.mapper.stored_events(aggregates)

    async def flush(self) -> None:
        if self.pending:
            await self.store.append(self.pending, self.meta)
            self.appended += len(self.pending)
            self.pending = []


def _slots(day: date) -> Iterator[tuple[datetime, datetime]]:
    tz = ZoneInfo(TZ)
    step = timedelta(minutes=MOTIVES[0].duration_minutes)
    for hours in HOURS:
        if hours.weekday == day.weekday():
            at = datetime.combine(day, hours.start, tz)
            while at + step <= datetime.combine(day, hours.end, tz):
                yield at, at + step
                at += step


async def _directory(writer: Writer) -> tuple[list[Practitioner], list[UUID]]:
    places = [
        Establishment.register(f"Cabinet {i}", f"{i} rue du Banc", CITIES[i % len(CITIES)], TZ)
        for i in range(ESTABLISHMENTS)
    ]
    await writer.take(*places)
    practitioners = []
    for i in range(PRACTITIONERS):
        p = Practitioner.register(
            f"Dr Bench {i}", "general practice", places[i % len(places)], BookingPolicy()
        )
        for motive in MOTIVES:
            p.add_motive(motive)
        p.set_opening_hours(HOURS)
        practitioners.append(p)
    await writer.take(*practitioners)
    patients = [
        Patient.register(
            f"Patient{i}",
            "Bench",
            date(1980, 1, 1),
            Sex.OTHER,
            f"patient{i}@example.org",
            "+33 6 00 00 00 00",
        )
        for i in range(PATIENTS)
    ]
    await writer.take(*patients)
    await writer.flush()
    return practitioners, [p.id for p in patients]


async def _bookings(
    writer: Writer,
    practitioners: list[Practitioner],
    patients: list[UUID],
    count: int,
    per_append: int,
    seed: int,
) -> None:
    """`count` bookings on these practitioners' agendas, day after day."""
    rng = random.Random(seed)
    booked: list[tuple[Appointment, AgendaDay]] = []
    done = 0
    day = FIRST_DAY
    while done < count:
        if day.weekday() < 5:
            for practitioner in practitioners:
                agenda_day = AgendaDay(practitioner_id=practitioner.id, day=day)
                for start, end in _slots(day):
                    if done >= count:
                        break
                    appointment = agenda.book(
                        agenda_day,
                        patient_id=rng.choice(patients),
                        establishment_id=practitioner.establishment_id,
                        motive_id=MOTIVES[0].id,
                        duration_minutes=MOTIVES[0].duration_minutes,
                        start=start,
                        end=end,
                        source=Source.STAFF,
                    )
                    await writer.take(agenda_day, appointment)
                    booked.append((appointment, agenda_day))
                    done += 1
                    if rng.random() < 0.1 and len(booked) > 5:
                        # A cancellation of an earlier booking, a few bookings later.
                        old, old_day = booked.pop(rng.randrange(len(booked) - 5, len(booked)))
                        agenda.cancel(old, old_day, "changed plans", Source.STAFF)
                        await writer.take(old_day, old)
                    if done % per_append == 0:
                        await writer.flush()
        day += timedelta(days=1)
    await writer.flush()


async def fill_log(
    pool: asyncpg.Pool, bookings: int, concurrency: int, per_append: int = 10
) -> int:
    """Append a directory and `bookings` bookings; return how many events the log holds."""
    began = time.perf_counter()
    practitioners, patients = await _directory(Writer(pool))
    writers = [Writer(pool) for _ in range(concurrency)]
    await asyncio.gather(
        *(
            _bookings(
                w,
                practitioners[i::concurrency],
                patients,
                bookings // concurrency + (i < bookings % concurrency),
                per_append,
                seed=i,
            )
            for i, w in enumerate(writers)
        )
    )
    total = int(await pool.fetchval("SELECT count(*) FROM carnet.events"))
    say(
        f"    log: {total:,} events ({bookings:,} bookings, {PRACTITIONERS} practitioners, "
        f"{PATIENTS} patients), written in {time.perf_counter() - began:.1f} s"
    )
    return total
