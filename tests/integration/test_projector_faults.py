"""No value a client sent and no passing database fault stops a projection,
and a projector between reading and writing holds back no reader of the log."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from domain.agenda import AgendaDay, Appointment
from domain.credentials import Token
from domain.directory import Establishment, Patient, Practitioner
from domain.ledger import GENESIS, LEDGER_ID, AccessRecord, AccessRecorded, chain_hash
from domain.values import Absence, BookingPolicy, Motive, Sex, Source
from infra.bootstrap import release_connection
from infra.codec import TypedMapper
from infra.eventstore import Checkpoint, Connection, EventStore, RecordedEvent
from infra.http.keys import Services
from infra.projection_status import statuses
from infra.projector import Projector
from infra.repository import PostgresRepository
from projections import all_projections
from tests.integration.test_projections import dump
from tests.workload import FIRST_SLOT, consultation, run_workload
from tests.world import META, ROOT, World

AGENDA = next(p for p in all_projections() if p.name == "agenda")
BAD = "\ufffd"  # what a NUL or a lone surrogate becomes in a read model


async def until(check: Callable[[], Awaitable[object]], within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def log_with_nul_everywhere(pool: asyncpg.Pool) -> None:
    """Append, as a log written before text was validated holds them, events whose
    client-sent strings carry NUL; and one stored by another writer with a lone
    surrogate escape. The event methods are called directly: no check in front."""
    est = Establishment(name="Cabinet\x00A", address="1 rue\x00A", city="Par\x00is", timezone="UTC")
    prac = Practitioner(
        name="Dr\x00One",
        specialty="g\x00p",
        establishment_id=est.id,
        timezone="UTC",
        policy=BookingPolicy(),
    )
    prac._motive_added(Motive("consultation", "Consul\x00tation", 20))
    prac._absence_added(Absence(FIRST_SLOT, FIRST_SLOT + timedelta(hours=1), "Con\x00gress"))
    patient = Patient(
        first_name="Al\x00ice",
        last_name="T\x00",
        birth_date=date(1980, 1, 1),
        sex=Sex.OTHER,
        email="al\x00ice@example.org",
        phone="+33 6 00 00 00 00",
    )
    patient._contact_details_changed(email="b\x00@example.org", phone="+33\x00")
    day = AgendaDay(practitioner_id=prac.id, day=FIRST_SLOT.date())
    booked = [
        consultation(day, patient.id, est.id, start)
        for start in (FIRST_SLOT + timedelta(hours=2), FIRST_SLOT + timedelta(hours=3))
    ]
    booked[0]._cancelled(reason="x\x00", by=Source.PATIENT)
    day._slot_released(booked[0].id)
    token = Token(
        token_hash="h",
        actor_kind="integration",
        actor_id=uuid4(),
        establishment_id=None,
        display_name="Soft\x00ware",
        expires_at=None,
    )
    store = EventStore(pool)
    await PostgresRepository(store).save([est, prac, patient, day, *booked, token], META)
    record = AccessRecord(
        actor_kind="integration",
        actor_id=str(token.actor_id),
        token_id=str(token.id),
        action="read",
        resource_type="Appoint\x00ment",
        patient_ids=(str(patient.id),),
        fields=("name\x00",),
        at=datetime.now(UTC),
        user_agent="ua\x00",
    )
    entry = AccessRecorded(
        originator_id=LEDGER_ID,
        originator_version=1,
        timestamp=datetime.now(UTC),
        record=record,
        prev_hash=GENESIS,
        hash=chain_hash(GENESIS, record),
    )
    surrogate = b'{"timestamp":"2026-12-01T07:00:00+00:00","reason":"y\\udc80","by":"patient"}'
    cancelled = StoredEvent(booked[1].id, 2, get_topic(Appointment) + ".Cancelled", surrogate)
    await store.append([TypedMapper().to_stored_event(entry), cancelled], META)


# Where the client-sent strings land in each read model, and what they read there.
LANDED = {
    "SELECT cancellation_reason, patient_name, motive_name FROM carnet_read.agenda_appointments "
    "ORDER BY start_at": [
        (f"x{BAD}", f"Al{BAD}ice T{BAD}", f"Consul{BAD}tation"),
        (f"y{BAD}", f"Al{BAD}ice T{BAD}", f"Consul{BAD}tation"),
    ],
    "SELECT establishment_name, city, cancellation_reason "
    "FROM carnet_read.patient_view_appointments ORDER BY start_at": [
        (f"Cabinet{BAD}A", f"Par{BAD}is", f"x{BAD}"),
        (f"Cabinet{BAD}A", f"Par{BAD}is", f"y{BAD}"),
    ],
    "SELECT name, specialty, motives->0->>'name', absences->0->>'reason' "
    "FROM carnet_read.directory_practitioners": [
        (f"Dr{BAD}One", f"g{BAD}p", f"Consul{BAD}tation", f"Con{BAD}gress")
    ],
    "SELECT name FROM carnet_read.availability_establishments": [(f"Cabinet{BAD}A",)],
    "SELECT a.label, e.resource_type, e.fields FROM carnet_read.access_log_actors a, "
    "carnet_read.access_log_entries e": [(f"Soft{BAD}ware", f"Appoint{BAD}ment", [f"name{BAD}"])],
}


async def test_nul_and_lone_surrogates_already_in_the_log_never_stop_a_projection(pool):
    await log_with_nul_everywhere(pool)
    projectors = [Projector(pool, p, batch_size=4) for p in all_projections()]
    for projector in projectors:
        await projector.catch_up()
    for rebuilt in (False, True):
        found = {s.name: (s.state, s.lag_events, s.error) for s in await statuses(pool)}
        assert found == {p.name: ("running", 0, None) for p in projectors}
        for query, rows in LANDED.items():
            assert [tuple(r) for r in await pool.fetch(query)] == rows, query
        if not rebuilt:
            for projector in projectors:
                assert await projector.rebuild() > 0


@contextlib.asynccontextmanager
async def running(projector: Projector) -> AsyncIterator[asyncio.Task[None]]:
    """The projector's runner, as `carnet run` starts it, for the block."""
    await projector.ensure()
    task = asyncio.create_task(projector.run(asyncio.Event(), idle=0.05))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def lock_agenda(db_url: str) -> asyncpg.Connection:
    """Hold the agenda's appointments table until the connection closes, so that its
    runner, started afterwards, blocks mid-batch."""
    conn = await asyncpg.connect(db_url)
    await conn.execute("BEGIN; LOCK TABLE carnet_read.agenda_appointments IN ACCESS EXCLUSIVE MODE")
    return conn


async def blocked_backend(
    pool: asyncpg.Pool, other_than: asyncpg.Record | None = None
) -> asyncpg.Record:
    """(pid, query_start) of the backend of this test's database that waits for a lock.

    Not asked inside a transaction: that would see one snapshot of the activity."""
    query = (
        "SELECT pid, query_start FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' "
        "AND (pid IS DISTINCT FROM $1 OR query_start IS DISTINCT FROM $2)"
    )
    before = tuple(other_than) if other_than is not None else (None, None)
    await until(lambda: pool.fetchrow(query, *before))
    found = await pool.fetchrow(query, *before)
    assert found is not None
    return found


async def caught_up_and_running(pool: asyncpg.Pool, projector: Projector) -> None:
    head = await EventStore(pool).head()

    async def done() -> bool:
        (status,) = [s for s in await statuses(pool) if s.name == projector.name]
        assert status.state == "running", status.error
        return await projector.checkpoint() >= head

    await until(done, within=30)
    reference = Projector(pool, AGENDA, instance="agenda_reference")
    await reference.ensure()
    await reference.catch_up()
    assert await dump(pool, projector) == await dump(pool, reference)


@pytest.mark.parametrize("batch_size", [1, 500])
@pytest.mark.parametrize("fault", ["pg_terminate_backend", "pg_cancel_backend"])
async def test_a_projector_whose_statement_is_killed_mid_batch_retries_and_catches_up(
    pool, db_url, services: Services, world: World, fault: str, batch_size: int
):
    await run_workload(services, world, 30, seed=21)
    agenda = Projector(pool, AGENDA, batch_size=batch_size)
    blocker = await lock_agenda(db_url)
    async with running(agenda):
        try:
            waiting = await blocked_backend(pool)
            assert await blocker.fetchval(
                f"SELECT {fault}(pid) FROM pg_stat_activity "
                "WHERE pid = $1 AND datname = current_database()",
                waiting["pid"],
            )
            # It retries, and waits for us again, in a new statement or on a new connection.
            await blocked_backend(pool, other_than=waiting)
        finally:
            await blocker.close()
        await caught_up_and_running(pool, agenda)


@pytest.mark.parametrize("setting", ["statement_timeout", "lock_timeout"])
async def test_a_projector_that_times_out_retries_with_backoff_and_catches_up(
    pool, db_url, services: Services, world: World, setting: str, caplog
):
    await run_workload(services, world, 30, seed=22)
    timing_out = await asyncpg.create_pool(
        db_url,
        min_size=1,
        max_size=2,
        reset=release_connection,
        server_settings={setting: "200"},
    )
    agenda = Projector(timing_out, AGENDA)
    try:
        blocker = await lock_agenda(db_url)
        with caplog.at_level(logging.WARNING, logger="carnet.projector"):
            async with running(agenda):
                try:
                    await asyncio.sleep(1.5)  # several timeouts, none of them a stop
                    (status,) = [s for s in await statuses(pool) if s.name == "agenda"]
                    assert status.state == "running", status.error
                finally:
                    await blocker.close()
                await caught_up_and_running(pool, agenda)
        timeouts = [r for r in caplog.records if "timeout" in r.getMessage()]
        assert len(timeouts) >= 2, [r.getMessage() for r in caplog.records]
    finally:
        await timing_out.close()


class PausedStore(EventStore):
    """The projector's reads: after its first batch is read, wait until released."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.read, self.release = asyncio.Event(), asyncio.Event()
        self.pid = 0

    async def read_after(
        self,
        after: Checkpoint,
        limit: int = 1000,
        conn: Connection | None = None,
        *,
        metadata: bool = True,
    ) -> list[RecordedEvent]:
        events = await super().read_after(after, limit, conn, metadata=metadata)
        if conn is not None and events and not self.read.is_set():
            self.pid = await conn.fetchval("SELECT pg_backend_pid()")
            self.read.set()
            await self.release.wait()
        return events


# Backends of this test's database that hold a transaction id (xids are cluster-wide:
# transactions of other databases on a shared server would hold readers back too).
XID_HOLDERS = """SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND backend_xid IS NOT NULL"""
ADVISORY_HOLDERS = """SELECT pid FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND database = (
        SELECT oid FROM pg_database WHERE datname = current_database())"""


async def test_a_projector_between_its_read_and_its_writes_holds_back_no_reader(
    pool, services: Services, world: World
):
    await run_workload(services, world, 10, seed=23)
    paused = PausedStore(pool)
    first = Projector(pool, AGENDA)
    first.store = paused
    applying = asyncio.create_task(first.run_once())
    await asyncio.wait_for(paused.read.wait(), 10)
    second = asyncio.create_task(Projector(pool, AGENDA).run_once())
    try:
        # An event committed while the projector is mid-batch, holding its lock...
        await services.directory.register_establishment(
            ROOT, META, "Cabinet C", "3 rue C", "Lille", "Europe/Paris"
        )
        # ...is held back from the log's readers by no transaction of this database: a
        # reader's horizon, pg_snapshot_xmin, is the oldest xid still running, and the
        # projector has none (`FOR UPDATE` gave it one, older than that event's).
        assert [r[0] for r in await pool.fetch(XID_HOLDERS)] == []
        assert paused.pid in {r[0] for r in await pool.fetch(ADVISORY_HOLDERS)}
        await asyncio.sleep(0.2)
        assert not second.done(), "a second worker of the projection must wait for the first"
    finally:
        paused.release.set()
    assert await applying > 0
    await second  # applied the rest (or nothing), never the first one's events again
    await Projector(pool, AGENDA).catch_up()
    (status,) = [s for s in await statuses(pool) if s.name == "agenda"]
    assert (status.state, status.lag_events) == ("running", 0)
