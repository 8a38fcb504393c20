"""The subscription never skips an event that commits late (DESIGN decision 2)."""

import asyncio
import random
from uuid import UUID, uuid4

import asyncpg
from eventsourcing.persistence import StoredEvent

from infra.bootstrap import with_database
from infra.eventstore import Checkpoint, EventStore, RecordedEvent
from infra.schema import SCHEMA
from services.ports import Metadata

META = Metadata(actor_kind="test", actor_id="writer")
WRITERS = 8
TARGET_EVENTS = 20_000


def events(n: int) -> list[StoredEvent]:
    return [StoredEvent(uuid4(), 1, "tests:Event", b'{"n":1}') for _ in range(n)]


async def readable(store: EventStore, n: int) -> list[RecordedEvent]:
    # Other transactions on the server (other databases too) can hold the
    # readable horizon back for a moment; wait for it rather than assume.
    for _ in range(500):
        events = await store.read_after(Checkpoint())
        if len(events) >= n:
            return events
        await asyncio.sleep(0.01)
    raise AssertionError("events never became readable")


class Rollback(Exception):
    pass


async def test_a_late_commit_is_seen_by_the_reader_where_a_position_checkpoint_skips_it(
    pool: asyncpg.Pool,
):
    store = EventStore(pool)
    slow = await pool.acquire()
    try:
        # A takes a lower position but has not committed yet...
        slow_tx = slow.transaction()
        await slow_tx.start()
        (late,) = events(1)
        await EventStore.append_on(slow, [late], META)
        # ...while B commits a higher position right away.
        (early,) = events(1)
        await store.append([early], META)

        # A naive reader checkpointing on position alone sees B and moves past A.
        naive = await pool.fetch(
            f"SELECT position, originator_id FROM {SCHEMA}.events ORDER BY position"
        )
        assert [r[1] for r in naive] == [early.originator_id]
        naive_checkpoint = naive[-1][0]
        # Ours waits: B's transaction started after A's, so neither is below xmin.
        assert await store.read_after(Checkpoint()) == []

        await slow_tx.commit()
        after_commit = await pool.fetch(
            f"SELECT originator_id FROM {SCHEMA}.events WHERE position > $1", naive_checkpoint
        )
        assert after_commit == []  # the naive reader has skipped A for ever
        seen = [e.originator_id for e in await readable(store, 2)]
        assert seen == [late.originator_id, early.originator_id]
    finally:
        await pool.release(slow)


async def test_tailing_reader_sees_every_committed_event_exactly_once(db_url: str):
    # Eight writers append batches in their own transactions, some of which
    # roll back and some of which sit on their inserts before committing,
    # while one reader tails the log the whole time.
    pool = await asyncpg.create_pool(db_url, min_size=WRITERS + 2, max_size=WRITERS + 2)
    store = EventStore(pool)
    rng = random.Random(20261128)
    committed: set[UUID | str] = set()
    rolled_back: set[UUID | str] = set()
    writers_done = asyncio.Event()

    async def writer(seed: int) -> None:
        rng_w = random.Random(seed)
        async with pool.acquire() as conn:
            while len(committed) < TARGET_EVENTS:
                batch = events(rng_w.randint(1, 6))
                ids = {e.originator_id for e in batch}
                try:
                    async with conn.transaction():
                        await EventStore.append_on(conn, batch, META)
                        if rng_w.random() < 0.15:
                            await asyncio.sleep(rng_w.uniform(0.005, 0.04))  # delayed commit
                        if rng_w.random() < 0.1:
                            raise Rollback
                except Rollback:
                    rolled_back.update(ids)
                else:
                    committed.update(ids)

    seen: list[UUID | str] = []
    checkpoints: list[Checkpoint] = []

    async def reader() -> None:
        checkpoint = Checkpoint()
        while True:
            batch = await store.read_after(checkpoint, 500)
            if batch:
                checkpoint = batch[-1].checkpoint
                checkpoints.append(checkpoint)
                seen.extend(e.originator_id for e in batch)
            elif writers_done.is_set() and len(seen) >= len(committed):
                return
            else:
                await asyncio.sleep(rng.uniform(0, 0.01))

    try:
        reading = asyncio.create_task(reader())
        await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        writers_done.set()
        await asyncio.wait_for(reading, 60)
    finally:
        await pool.close()

    assert len(committed) >= TARGET_EVENTS
    assert rolled_back, "the workload must include rollbacks"
    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert set(seen) == committed, "a committed event was skipped"
    assert not set(seen) & rolled_back
    assert checkpoints == sorted(checkpoints)


async def test_a_transaction_in_another_database_does_not_hold_the_log_back(
    pool: asyncpg.Pool, db_url: str
):
    """Transaction ids are cluster-wide, but another database can never write this log.

    An application sharing the PostgreSQL server (or another Carnet database)
    that keeps a transaction open must not stop this log's readers, and with
    them every projection and the relay.
    """
    other = f"carnet_other_{uuid4().hex[:8]}"
    admin = await asyncpg.connect(db_url)
    await admin.execute(f'CREATE DATABASE "{other}"')
    elsewhere = await asyncpg.connect(with_database(db_url, other))
    try:
        held = elsewhere.transaction()
        await held.start()
        await elsewhere.fetchval("SELECT pg_current_xact_id()")  # it holds an xid now
        store = EventStore(pool)
        (event,) = events(1)
        await store.append([event], META)
        seen = [e.originator_id for e in await readable(store, 1)]
        assert seen == [event.originator_id]
        # Ours still wait for a transaction of this database, as before.
        slow = await pool.acquire()
        try:
            mine = slow.transaction()
            await mine.start()
            await EventStore.append_on(slow, events(1), META)
            await store.append(events(1), META)
            assert len(await store.read_after(Checkpoint())) == 1
            await mine.rollback()
        finally:
            await pool.release(slow)
        await held.rollback()
    finally:
        await elsewhere.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
        await admin.close()
