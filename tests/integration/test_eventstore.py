import asyncio
from datetime import date, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.persistence import StoredEvent

from domain import agenda
from domain.agenda import AgendaDay, Appointment
from domain.directory import Establishment, Practitioner
from domain.values import BookingPolicy, Motive, Source
from infra.eventstore import Checkpoint, EventStore, RecordedEvent
from infra.repository import PostgresRepository
from infra.schema import SCHEMA
from services.ports import Idempotency, Metadata, VersionConflict
from tests.conftest import T0

META = Metadata(actor_kind="staff", actor_id="s-1", request_id="r-1", correlation_id="c-1")


def book_at(day: AgendaDay, start: datetime) -> Appointment:
    """A 20-minute booking for someone on `day`; the caller saves it."""
    return agenda.book(
        day,
        patient_id=uuid4(),
        establishment_id=uuid4(),
        motive_id="m",
        duration_minutes=20,
        start=start,
        end=start + timedelta(minutes=20),
        source=Source.PATIENT,
    )


async def readable(store: EventStore, n: int) -> list[RecordedEvent]:
    """The first n events, once readable: a transaction open anywhere in the
    cluster holds the readable horizon back for a while."""
    for _ in range(500):
        events = await store.read_after(Checkpoint())
        if len(events) >= n:
            return events
        await asyncio.sleep(0.01)
    raise AssertionError("events never became readable")


async def count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.events"))


async def test_aggregates_round_trip_with_their_declared_types(pool):
    repo = PostgresRepository(EventStore(pool))
    e = Establishment.register("Cabinet", "1 rue A", "Paris")
    p = Practitioner.register("Dr A", "GP", e, BookingPolicy(30, 10, 60))
    p.add_motive(Motive("consultation", "Consultation", 20))
    await repo.save([e, p], META)
    loaded = await repo.get(Practitioner, p.id)
    assert loaded is not None
    assert loaded.version == p.version
    assert loaded.establishment_id == e.id and isinstance(loaded.establishment_id, type(e.id))
    assert loaded.policy == BookingPolicy(30, 10, 60)
    assert loaded.motives == {"consultation": Motive("consultation", "Consultation", 20)}


async def test_an_id_of_another_kind_of_aggregate_is_not_found(pool):
    repo = PostgresRepository(EventStore(pool))
    e = Establishment.register("Cabinet", "1 rue A", "Paris")
    await repo.save([e], META)
    assert await repo.get(Practitioner, e.id) is None
    assert await repo.get(Establishment, uuid4()) is None


async def test_a_stale_version_raises_the_stores_conflict_error(pool):
    repo = PostgresRepository(EventStore(pool))
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    await repo.save([day], META)
    first = await repo.get(AgendaDay, day.id)
    second = await repo.get(AgendaDay, day.id)
    assert first is not None and second is not None
    start = T0 + timedelta(days=1)
    book_at(first, start)
    other = start + timedelta(hours=1)
    book_at(second, other)
    await repo.save([first], META)
    with pytest.raises(VersionConflict):
        await repo.save([second], META)


async def test_a_multi_aggregate_append_is_all_or_nothing(pool):
    # The appointment is new, but the day is stale: neither may be stored.
    store = EventStore(pool)
    repo = PostgresRepository(store)
    day = AgendaDay(practitioner_id=uuid4(), day=date(2026, 12, 2))
    await repo.save([day], META)
    stale = await repo.get(AgendaDay, day.id)
    assert stale is not None
    winner = await repo.get(AgendaDay, day.id)
    assert winner is not None
    start = T0 + timedelta(days=1)
    book_at(winner, start)
    await repo.save([winner], META)
    before = await count(pool)
    appointment = book_at(stale, start + timedelta(hours=1))
    with pytest.raises(VersionConflict):
        await repo.save([appointment, stale], META)
    assert await count(pool) == before
    assert await repo.get(Appointment, appointment.id) is None


async def test_an_idempotency_claim_commits_with_the_events_or_not_at_all(pool):
    store = EventStore(pool)
    event = StoredEvent(uuid4(), 1, "tests:Event", b"{}")
    claim = Idempotency("scope", "key-1", "hash", "result")
    position = await store.append([event], META, claim)
    found = await store.idempotent_result("scope", "key-1")
    assert found is not None and (found.result, found.position) == ("result", position)
    before = await count(pool)
    with pytest.raises(VersionConflict):  # same key again: the whole append is refused
        await store.append([StoredEvent(uuid4(), 1, "tests:Event", b"{}")], META, claim)
    assert await count(pool) == before


async def test_stored_events_carry_position_time_and_request_metadata(pool):
    store = EventStore(pool)
    ids = [uuid4() for _ in range(3)]
    last = await store.append([StoredEvent(i, 1, "tests:Event", b"{}") for i in ids], META)
    recorded = await readable(store, len(ids))
    assert [r.originator_id for r in recorded] == ids
    assert recorded[-1].position == last
    assert [r.position for r in recorded] == sorted(r.position for r in recorded)
    assert all(r.recorded_at is not None for r in recorded)
    assert recorded[0].metadata == {
        "actor_kind": "staff",
        "actor_id": "s-1",
        "request_id": "r-1",
        "correlation_id": "c-1",
        "token_id": "",
    }


async def test_concurrent_appends_to_one_aggregate_let_exactly_one_win(pool):
    store = EventStore(pool)
    aggregate_id = uuid4()

    async def attempt() -> bool:
        try:
            await store.append([StoredEvent(aggregate_id, 1, "tests:Event", b"{}")], META)
        except VersionConflict:
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(20)))
    assert results.count(True) == 1
    assert len(await store.read_aggregate(aggregate_id)) == 1
