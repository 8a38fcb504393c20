"""The Repository port, one contract for both adapters: the in-memory fake the
service tests use and PostgresRepository with its aggregate cache.

Each test has a `writer` and a `reader`: for PostgreSQL two repositories with
caches of their own (as two processes have), for the fake one shared store.
Whatever the reader has cached, what it answers must equal a fresh full
replay of the log: the cache may save work, never freshness.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from eventsourcing.domain import Aggregate

from domain.agenda import AgendaDay
from domain.directory import Establishment, Patient, Practitioner
from domain.values import Absence, Motive, OpeningHours, Sex
from infra.aggregate_cache import frozen
from infra.eventstore import EventStore
from infra.repository import POSITION, PostgresRepository, log_position
from infra.schema import SCHEMA
from services.ports import Idempotency, Metadata, Repository, StaleRead, VersionConflict
from tests.unit.fakes import FakeRepository

META = Metadata(actor_kind="admin", actor_id="contract")
DAY = date(2026, 12, 2)
Wanted = list[tuple[type[Aggregate], UUID]]


@dataclass
class Pair:
    writer: Repository
    reader: Repository
    fresh: Repository  # no cache: a full replay every time
    kind: str


@pytest.fixture(params=["fake", "postgres"])
async def pair(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> AsyncIterator[Pair]:
    if request.param == "fake":
        shared = FakeRepository()
        yield Pair(shared, shared, shared, "fake")
        return
    yield Pair(
        PostgresRepository(EventStore(pool)),
        PostgresRepository(EventStore(pool)),
        PostgresRepository(EventStore(pool), cache_capacity=0),
        "postgres",
    )


def state(aggregate: Aggregate | None) -> dict[str, Any] | None:
    """All an aggregate holds (its version and log position included)."""
    if aggregate is None:
        return None
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


async def practice(repo: Repository) -> tuple[Establishment, Practitioner]:
    place = Establishment.register("Cabinet", "1 rue A", "Paris")
    doctor = Practitioner.register("Dr A", "GP", place)
    doctor.add_motive(Motive("consultation", "Consultation", 20))
    doctor.set_opening_hours(tuple(OpeningHours(d, time(9), time(12)) for d in range(5)))
    await repo.save([place, doctor], META)
    return place, doctor


def slot(n: int) -> tuple[datetime, datetime]:
    start = datetime(2026, 12, 2, 8, tzinfo=UTC) + timedelta(minutes=20 * n)
    return start, start + timedelta(minutes=20)


async def test_a_reader_that_cached_an_aggregate_sees_every_later_save(pair: Pair):
    _, doctor = await practice(pair.writer)
    day = AgendaDay(practitioner_id=doctor.id, day=DAY)
    await pair.writer.save([day], META)
    assert state(await pair.reader.get(Practitioner, doctor.id)) is not None
    assert state(await pair.reader.get(AgendaDay, day.id)) is not None

    # The writer (another process) changes both; the reader's cache is behind.
    changed = await pair.writer.get(Practitioner, doctor.id)
    assert changed is not None
    changed.add_motive(Motive("long", "Long visit", 40))
    day.reserve(uuid4(), *slot(0))
    await pair.writer.save([changed, day], META)

    both: Wanted = [(Practitioner, doctor.id), (AgendaDay, day.id)]
    got = await pair.reader.get_many(both)
    fresh = await pair.fresh.get_many(both)
    assert [state(a) for a in got] == [state(a) for a in fresh]
    found = got[0]
    assert isinstance(found, Practitioner) and "long" in found.motives
    assert isinstance(got[1], AgendaDay) and len(got[1].bookings) == 1


async def test_concurrent_saves_by_two_writers_then_one_read_equals_a_full_replay(pair: Pair):
    _, doctor = await practice(pair.writer)
    day = AgendaDay(practitioner_id=doctor.id, day=DAY)
    await pair.writer.save([day], META)
    others = [pair.writer, pair.reader]

    async def book(n: int) -> None:
        repo = others[n % 2]
        while True:
            found = await repo.get(AgendaDay, day.id)
            assert found is not None
            found.reserve(uuid4(), *slot(n))
            try:
                await repo.save([found], META)
                return
            except VersionConflict:
                await asyncio.sleep(0)

    async def keep_reading() -> None:
        for _ in range(20):
            assert await pair.reader.get(AgendaDay, day.id) is not None
            await asyncio.sleep(0)

    await asyncio.gather(*(book(n) for n in range(9)), keep_reading())

    fresh = await pair.fresh.get(AgendaDay, day.id)
    assert fresh is not None and len(fresh.bookings) == 9
    for repo in others:
        assert state(await repo.get(AgendaDay, day.id)) == state(fresh)
        assert [state(a) for a in await repo.get_many([(AgendaDay, day.id)])] == [state(fresh)]


async def test_a_missing_id_and_another_kind_are_none_cached_or_not(pair: Pair):
    place, doctor = await practice(pair.writer)
    nobody = uuid4()
    assert await pair.reader.get(Practitioner, nobody) is None
    assert await pair.reader.get(Patient, doctor.id) is None  # not cached yet
    assert isinstance(await pair.reader.get(Practitioner, doctor.id), Practitioner)
    assert await pair.reader.get(Patient, doctor.id) is None  # cached as a Practitioner
    wanted: Wanted = [
        (Practitioner, doctor.id),
        (Patient, doctor.id),
        (Establishment, nobody),
        (Establishment, place.id),
        (Practitioner, doctor.id),
    ]
    got = await pair.reader.get_many(wanted)
    assert [type(a).__name__ for a in got] == [
        "Practitioner",
        "NoneType",
        "NoneType",
        "Establishment",
        "Practitioner",
    ]
    assert got[0] is not got[4]  # never one object for two answers
    assert await pair.reader.get_many([]) == []


async def test_an_aggregate_handed_out_is_the_callers_own(pair: Pair):
    _, doctor = await practice(pair.writer)
    first = await pair.reader.get(Practitioner, doctor.id)
    assert first is not None
    # Changed in memory and never saved (a refused request): nobody else sees it.
    first.add_absence(Absence(*slot(0), "away"))
    first.motives.clear()
    again = await pair.reader.get(Practitioner, doctor.id)
    assert again is not None and again is not first
    assert again.absences == [] and "consultation" in again.motives
    assert state(again) == state(await pair.fresh.get(Practitioner, doctor.id))


async def test_a_lost_race_leaves_the_winners_state(pair: Pair):
    _, doctor = await practice(pair.writer)
    day = AgendaDay(practitioner_id=doctor.id, day=DAY)
    await pair.writer.save([day], META)
    mine = await pair.reader.get(AgendaDay, day.id)
    theirs = await pair.writer.get(AgendaDay, day.id)
    assert mine is not None and theirs is not None
    theirs.reserve(uuid4(), *slot(1))
    await pair.writer.save([theirs], META)
    mine.reserve(uuid4(), *slot(2))
    with pytest.raises(VersionConflict):
        await pair.reader.save([mine], META)
    got = await pair.reader.get(AgendaDay, day.id)
    assert state(got) == state(await pair.fresh.get(AgendaDay, day.id))
    assert got is not None and [b.start for b in got.bookings.values()] == [slot(1)[0]]


async def test_what_a_save_fed_the_cache_reads_back_as_a_replay_would(pair: Pair):
    patient = Patient.register(
        "Ann", "X", date(1990, 1, 1), Sex.OTHER, "ann@example.org", "+33 6 1 2 3 4"
    )
    await pair.writer.save([patient], META)
    patient.change_contact_details("ann@example.com", "+33 6 9 9 9 9")
    await pair.writer.save([patient], META)
    got = await pair.writer.get(Patient, patient.id)
    assert state(got) == state(await pair.fresh.get(Patient, patient.id))
    assert got is not None and got.email == "ann@example.com"


async def test_a_save_relying_on_a_record_that_changed_since_saves_nothing(pair: Pair):
    _, doctor = await practice(pair.writer)
    assert await pair.reader.get(Practitioner, doctor.id) is not None  # cached now
    seen = (await pair.reader.get_many([(Practitioner, doctor.id)], remembered=True))[0]
    assert isinstance(seen, Practitioner)

    # Another writer (process) changes the practitioner the reader decides on.
    theirs = await pair.writer.get(Practitioner, doctor.id)
    assert theirs is not None
    theirs.add_absence(Absence(*slot(0), "away"))
    await pair.writer.save([theirs], META)

    day = AgendaDay(practitioner_id=doctor.id, day=DAY)
    day.reserve(uuid4(), *slot(0))
    claim = Idempotency("contract", "k1", "hash", "result")
    with pytest.raises(StaleRead):
        await pair.reader.save([day], META, claim, relied_on=[seen, None])
    assert await pair.fresh.get(AgendaDay, day.id) is None
    assert await pair.reader.idempotent_result("contract", "k1") is None

    # Decided again on what the log holds, the same write goes in.
    again = (await pair.reader.get_many([(Practitioner, doctor.id)], remembered=True))[0]
    assert state(again) == state(await pair.fresh.get(Practitioner, doctor.id))
    assert isinstance(again, Practitioner) and len(again.absences) == 1
    day = AgendaDay(practitioner_id=doctor.id, day=DAY)
    day.reserve(uuid4(), *slot(1))
    await pair.reader.save([day], META, claim, relied_on=[again])
    assert await pair.fresh.get(AgendaDay, day.id) is not None
    assert await pair.reader.idempotent_result("contract", "k1") is not None


async def test_a_save_relying_on_unchanged_records_goes_in(pair: Pair):
    place, doctor = await practice(pair.writer)
    wanted: Wanted = [(Practitioner, doctor.id), (Establishment, place.id)]
    await pair.reader.get_many(wanted)
    read = await pair.reader.get_many(wanted, remembered=True)
    assert [state(a) for a in read] == [state(a) for a in await pair.fresh.get_many(wanted)]
    day = AgendaDay(practitioner_id=doctor.id, day=DAY)
    day.reserve(uuid4(), *slot(0))
    # The day itself is new: among the changed, a relied-on record is not checked twice.
    assert await pair.reader.save([day], META, relied_on=[*read, day]) > 0
    assert await pair.fresh.get(AgendaDay, day.id) is not None


async def test_the_history_of_an_aggregate_is_its_events_in_order(pair: Pair):
    patient = Patient.register(
        "Héloïse", "Abélard", date(1990, 3, 3), Sex.FEMALE, "h@example.org", "+33 6 10 10 10 10"
    )
    await pair.writer.save([patient], META)
    patient.change_contact_details("h2@example.org", "+33 6 20 20 20 20")
    await pair.writer.save([patient], META)
    events = await pair.reader.history(patient.id)
    assert [type(e).__name__ for e in events] == ["Registered", "ContactDetailsChanged"]
    assert [e.originator_version for e in events] == [1, 2]
    assert (events[0].first_name, events[1].email) == ("Héloïse", "h2@example.org")
    assert await pair.reader.history(uuid4()) == []


# -- PostgreSQL only: positions, the bound, a log that changed behind the cache --


@pytest.fixture
def repo(pool: asyncpg.Pool) -> PostgresRepository:
    return PostgresRepository(EventStore(pool))


async def test_the_log_position_is_the_full_reads(repo: PostgresRepository):
    place, doctor = await practice(repo)
    other = PostgresRepository(repo.store)
    day = AgendaDay(practitioner_id=doctor.id, day=DAY)
    day.reserve(uuid4(), *slot(0))
    # Saved after `day`: the day's own last event is not the append's last.
    await repo.save([day, Establishment.register("B", "2 rue B", "Lyon")], META)
    for aggregate_id in (doctor.id, day.id, place.id):
        _, full = await repo.store.read_aggregate_at(aggregate_id)
        for r in (repo, other, repo, other):  # cached and fed, cold, then warm
            found = await r.get(Aggregate, aggregate_id)
            assert found is not None and log_position(found) == full
            assert found.__dict__[POSITION] == full


async def test_the_cache_holds_at_most_its_capacity_least_recently_used_first_out(
    pool: asyncpg.Pool,
):
    repo = PostgresRepository(EventStore(pool), cache_capacity=3)
    ids = []
    for n in range(5):
        place = Establishment.register(f"E{n}", "1 rue A", "Paris")
        await repo.save([place], META)
        ids.append(place.id)
    assert len(repo.cache) == 3 and all(i in repo.cache for i in ids[2:])
    await repo.get(Establishment, ids[2])  # now the most recently used
    await repo.get_many([(Establishment, ids[0]), (Establishment, ids[1])])
    assert len(repo.cache) == 3
    assert [i in repo.cache for i in ids] == [True, True, True, False, False]
    for i in ids:  # evicted or not, the same answer
        found = await repo.get(Establishment, i)
        assert found is not None and found.id == i
    assert len(repo.cache) == 3


async def test_a_log_rewound_behind_the_cache_is_read_again_whole(
    repo: PostgresRepository, pool: asyncpg.Pool
):
    """As after a restore from backup that this process did not see: the cached
    versions are gone, or other rows stand at them. Never the cached state."""
    _, doctor = await practice(repo)  # versions 1-3
    cached = await repo.get(Practitioner, doctor.id)
    assert cached is not None and cached.version == 3
    await pool.execute(
        f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version > 1",
        doctor.id,
    )
    got = await repo.get(Practitioner, doctor.id)
    assert got is not None and got.version == 1 and got.motives == {}
    assert state(got) == state(
        await PostgresRepository(repo.store, cache_capacity=0).get(Practitioner, doctor.id)
    )

    # Another row at the cached version (same version, another position).
    again = await repo.get(Practitioner, doctor.id)
    assert again is not None
    row: Any = await pool.fetchrow(
        f"SELECT topic, state FROM {SCHEMA}.events WHERE originator_id = $1", doctor.id
    )
    await pool.execute(f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1", doctor.id)
    other = Practitioner.register("Dr B", "Dentist", Establishment.register("C", "a", "Nice"))
    await pool.execute(
        f"INSERT INTO {SCHEMA}.events (originator_id, originator_version, topic, state) "
        "VALUES ($1, 1, $2, $3)",
        doctor.id,
        row["topic"],
        repo.mapper.to_stored_event(_renamed(other.collect_events()[0], doctor.id)).state,
    )
    got = await repo.get(Practitioner, doctor.id)
    assert got is not None and got.name == "Dr B"


def _renamed(event: Any, aggregate_id: UUID) -> Any:
    """The same event as if it had been another aggregate's."""
    object.__setattr__(event, "originator_id", aggregate_id)
    return event


def test_only_events_of_immutable_values_are_cached():
    assert frozen((1, "a", uuid4(), Motive("m", "M", 20), (OpeningHours(0, time(9), time(10)),)))
    assert frozen(datetime.now(UTC)) and frozen(frozenset({1})) and frozen(Sex.OTHER)
    assert not frozen([1]) and not frozen({"a": 1}) and not frozen((1, [2]))


# -- how the booking service uses the port: few round trips, same answers ----
# (service tests on the fake; they may move to tests/unit/test_booking_service.py)


async def booking_world() -> tuple[FakeRepository, Any, Practitioner, Any]:
    from services.actors import Actor, ActorKind
    from services.booking import BookingService
    from tests.conftest import FakeClock

    repo = FakeRepository()
    _, doctor = await practice(repo)
    ann = Patient.register("Ann", "X", date(1990, 1, 1), Sex.OTHER, "a@example.org", "+33 6 1")
    await repo.save([ann], META)
    service = BookingService(repo, FakeClock(datetime(2026, 12, 1, 7, tzinfo=UTC)))
    return repo, service, doctor, Actor(ActorKind.PATIENT, ann.id)


async def test_a_booking_reads_in_two_round_trips_then_one_and_looks_no_key_up():
    repo, service, doctor, ann = await booking_world()
    reads = repo.reads
    await service.book(
        ann,
        META,
        practitioner_id=doctor.id,
        motive_id="consultation",
        start=slot(0)[0],
        idempotency_key="first",
    )
    assert repo.reads - reads == 2 and repo.lookups == 0
    reads = repo.reads
    booked = await service.book(
        ann,
        META,
        practitioner_id=doctor.id,
        motive_id="consultation",
        start=slot(1)[0],
        idempotency_key="second",
    )
    # The practitioner's place is known now: everything in one round trip.
    assert repo.reads - reads == 1 and repo.lookups == 0
    reads = repo.reads
    await service.cancel(ann, META, booked.appointment.id, "")
    assert repo.reads - reads == 2


async def test_a_repeat_replays_even_when_the_request_would_now_be_refused():
    """The key comes first, as when it was looked up before anything else: a
    retry after the minimum notice has passed gets the first answer, not TooLate;
    a key reused for a refused request is still a reused key."""
    from domain.errors import IdempotencyKeyReused, TooLate

    repo, service, doctor, ann = await booking_world()
    start = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)  # 09:30 Paris, 90 minutes ahead
    first = await service.book(
        ann,
        META,
        practitioner_id=doctor.id,
        motive_id="consultation",
        start=start,
        idempotency_key="k",
    )
    service.clock.advance(minutes=45)  # now inside the hour of notice
    with pytest.raises(TooLate):  # as the same request without its key is now
        await service.book(
            ann, META, practitioner_id=doctor.id, motive_id="consultation", start=start
        )
    saves = len(repo.saves)
    again = await service.book(
        ann,
        META,
        practitioner_id=doctor.id,
        motive_id="consultation",
        start=start,
        idempotency_key="k",
    )
    assert again.replayed and again.appointment.id == first.appointment.id
    assert len(repo.saves) == saves
    with pytest.raises(IdempotencyKeyReused):
        await service.book(
            ann,
            META,
            practitioner_id=doctor.id,
            motive_id="nothing-like-it",
            start=start,
            idempotency_key="k",
        )
    # Another free slot under the used key: the claim fails, nothing is booked.
    with pytest.raises(IdempotencyKeyReused):
        await service.book(
            ann,
            META,
            practitioner_id=doctor.id,
            motive_id="consultation",
            start=datetime(2026, 12, 2, 9, tzinfo=UTC),
            idempotency_key="k",
        )
    assert len(repo.saves) == saves


async def two_booking_processes(
    pool: asyncpg.Pool,
) -> tuple[Any, Any, PostgresRepository, Practitioner, Any, Any]:
    """Two booking services on repositories with caches of their own (two processes)."""
    from services.actors import Actor, ActorKind
    from services.booking import BookingService
    from tests.conftest import FakeClock

    here, there = PostgresRepository(EventStore(pool)), PostgresRepository(EventStore(pool))
    _, doctor = await practice(there)
    ann, bob = (
        Patient.register(n, "X", date(1990, 1, 1), Sex.OTHER, f"{n}@example.org", "+33 6 1")
        for n in ("ann", "bob")
    )
    await there.save([ann, bob], META)
    clock = FakeClock(datetime(2026, 12, 1, 7, tzinfo=UTC))
    return (
        BookingService(here, clock),
        BookingService(there, clock),
        there,
        doctor,
        Actor(ActorKind.PATIENT, ann.id),
        Actor(ActorKind.PATIENT, bob.id),
    )


async def test_a_booking_on_a_cache_another_process_made_stale_is_refused(pool: asyncpg.Pool):
    from domain.errors import DuringAbsence

    here, _, there, doctor, ann, _ = await two_booking_processes(pool)
    at = {"practitioner_id": doctor.id, "motive_id": "consultation"}
    await here.book(ann, META, **at, start=slot(0)[0])  # `here` remembers it all now
    theirs = await there.get(Practitioner, doctor.id)
    assert theirs is not None
    theirs.add_absence(Absence(*slot(1), "away"))
    await there.save([theirs], META)

    with pytest.raises(DuringAbsence):
        await here.book(ann, META, **at, start=slot(1)[0])
    day = await there.get(AgendaDay, AgendaDay.create_id(doctor.id, DAY))
    assert day is not None and [b.start for b in day.bookings.values()] == [slot(0)[0]]


async def test_a_refusal_on_a_stale_cache_is_decided_again_on_the_log(pool: asyncpg.Pool):
    here, elsewhere, _, doctor, ann, bob = await two_booking_processes(pool)
    at = {"practitioner_id": doctor.id, "motive_id": "consultation", "start": slot(2)[0]}
    await here.book(bob, META, **{**at, "start": slot(3)[0]})
    first = await here.book(ann, META, **at)  # `here` remembers the slot as taken
    await elsewhere.cancel(ann, META, first.appointment.id, "")  # another process frees it
    booked = await here.book(bob, META, **at)
    assert booked.appointment.patient_id == bob.id and booked.position > first.position
