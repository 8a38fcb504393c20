"""The access ledger on real PostgreSQL: group-committed, fail-closed, tamper-evident."""

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from eventsourcing.utils import get_topic
from prometheus_client import REGISTRY

from domain.ledger import LEDGER_ID, AccessRecord, AccessRecorded, Entry, Finding, chain_hash
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.ledger import Ledger, LedgerUnavailable, read_chain, verify_ledger
from infra.schema import SCHEMA

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


def access(n: int, actor: str = "patient") -> AccessRecord:
    return AccessRecord(
        actor_kind=actor,
        actor_id=f"{actor}-{n}",
        action="read",
        resource_type="appointment",
        record_ids=(f"appointment-{n}",),
        patient_ids=(f"patient-{n}",),
        fields=("start", "practitioner"),
        at=T0 + timedelta(milliseconds=n),
        request_id=f"request-{n}",
        as_of=n,
    )


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> AsyncIterator[Ledger]:
    ledger = Ledger(EventStore(pool))
    yield ledger
    await ledger.close()


async def rows_per_insert(pool: asyncpg.Pool) -> list[int]:
    """Ledger entries per transaction, over every shard."""
    counts = await pool.fetch(
        f"SELECT count(*) FROM {SCHEMA}.events WHERE topic = $1 GROUP BY tx ORDER BY tx",
        get_topic(AccessRecorded),
    )
    return [int(c[0]) for c in counts]


def gap_free(entries: list[Entry]) -> bool:
    """Whether each shard's entries are numbered 1, 2, 3… (in sequence order)."""
    by_shard: dict[int, list[int]] = {}
    for e in entries:
        by_shard.setdefault(e.shard, []).append(e.version)
    return all(v == list(range(1, len(v) + 1)) for v in by_shard.values())


# -- group commit -------------------------------------------------------------


async def test_concurrent_accesses_share_a_few_inserts_and_form_one_gap_free_chain(pool, ledger):
    batches_before = sample("carnet_ledger_batch_entries_count")

    numbers = await asyncio.gather(*(ledger.record(access(n)) for n in range(200)))

    entries = await read_chain(pool)
    assert sorted(numbers) == [e.sequence for e in entries] and len(set(numbers)) == 200
    assert gap_free(entries)
    # Each caller got the sequence (log position) of the entry holding its own record.
    by_sequence = {e.sequence: e.record for e in entries}
    assert all(by_sequence[v] == access(n) for n, v in enumerate(numbers))
    assert await verify_ledger(pool) is None
    inserts = await rows_per_insert(pool)
    assert sum(inserts) == 200 and len(inserts) < 50, inserts
    assert sample("carnet_ledger_batch_entries_count") - batches_before == len(inserts)


async def test_a_batch_never_exceeds_max_batch(pool):
    ledger = Ledger(EventStore(pool), max_batch=64, interval=0.05)
    await asyncio.gather(*(ledger.record(access(n)) for n in range(300)))
    await ledger.close()
    inserts = await rows_per_insert(pool)
    assert max(inserts) == 64 and sum(inserts) == 300, inserts
    assert await verify_ledger(pool) is None


async def test_a_lone_access_is_written_at_once_in_its_own_insert(pool, ledger):
    started = asyncio.get_running_loop().time()
    first = await ledger.record(access(1))
    second = await ledger.record(access(2))
    assert asyncio.get_running_loop().time() - started < 1.0
    assert 0 < first < second
    assert await rows_per_insert(pool) == [1, 1]
    assert [e.sequence for e in await read_chain(pool)] == [first, second]


async def test_closing_writes_what_is_pending_and_then_refuses_new_entries(pool):
    ledger = Ledger(EventStore(pool), interval=60)  # would wait a minute for company
    waiting = [asyncio.create_task(ledger.record(access(n))) for n in range(5)]
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await ledger.close()
    numbers = await asyncio.gather(*waiting)
    assert sorted(numbers) == [e.sequence for e in await read_chain(pool)] and len(numbers) == 5
    with pytest.raises(LedgerUnavailable):
        await ledger.record(access(6))


async def test_a_disabled_ledger_answers_at_once_and_writes_nothing(pool):
    ledger = Ledger(EventStore(pool), disabled=True)
    assert await ledger.record(access(1)) == 0
    await ledger.close()
    assert await read_chain(pool) == []


# -- two processes ------------------------------------------------------------


async def test_two_processes_write_at_once_on_their_own_shards_and_every_chain_verifies(
    db_url, pool
):
    other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    first, second = Ledger(EventStore(pool)), Ledger(EventStore(other_pool))
    conflicts = sample("carnet_version_conflicts_total")
    try:
        numbers = await asyncio.gather(
            *(first.record(access(n, "a")) for n in range(300)),
            *(second.record(access(n, "b")) for n in range(300)),
            *(first.record(access(n, "c")) for n in range(5)),
        )
        held = first.held, second.held
    finally:
        await first.close()
        await second.close()
        await other_pool.close()

    # Nobody was refused, and each process wrote its own chains.
    assert len(held[0]) == len(held[1]) == 4 and not set(held[0]) & set(held[1]), held
    assert sample("carnet_version_conflicts_total") == conflicts
    entries = await read_chain(pool)
    assert sorted(numbers) == [e.sequence for e in entries] and len(set(numbers)) == 605
    assert gap_free(entries)
    assert await verify_ledger(pool) is None
    # Released on close: the next process reuses those shards, makes no new ones.
    third = Ledger(EventStore(pool))
    await third.record(access(1, "d"))
    assert set(third.held) <= set(held[0]) | set(held[1])
    await third.close()


async def inversions(pool: asyncpg.Pool) -> int:
    """Entries whose transaction committed before that of an entry at a lower sequence."""
    return await pool.fetchval(
        f"""SELECT count(*) FROM (
            SELECT tx, lag(tx) OVER (ORDER BY position) AS before FROM {SCHEMA}.events
            WHERE topic = $1) t WHERE tx < before""",
        get_topic(AccessRecorded),
    )


async def test_entries_become_visible_in_sequence_order_across_shards_and_processes(db_url, pool):
    """A reader paging by sequence (GET /ledger's `after`) must never see an entry
    appear below one it already saw. The index applies the log in (tx, position)
    order, so across every shard and process the entries' transaction order must
    be their position order: a batch takes its positions and commits in turn."""
    other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    first, second = Ledger(EventStore(pool)), Ledger(EventStore(other_pool))
    try:
        for _ in range(5):
            await asyncio.gather(
                *(first.record(access(n, "a")) for n in range(200)),
                *(second.record(access(n, "b")) for n in range(200)),
            )
    finally:
        await first.close()
        await second.close()
        await other_pool.close()
    assert await inversions(pool) == 0


async def test_two_writers_on_one_shard_retry_on_conflict_and_keep_one_valid_chain(db_url, pool):
    # The same holder: both think they hold shard 0 (as after a lapsed lease).
    other_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    first = Ledger(EventStore(pool), shards=1, holder="twin")
    second = Ledger(EventStore(other_pool), shards=1, holder="twin")
    try:
        await first.record(access(1, "a"))
        await second.record(access(1, "b"))
        await first.record(access(2, "a"))  # `second`'s head is now stale
        await second.record(access(2, "b"))
        assert first.held == second.held == [0]
        numbers = await asyncio.gather(
            *(first.record(access(n, "a")) for n in range(3, 103)),
            *(second.record(access(n, "b")) for n in range(3, 103)),
        )
    finally:
        await first.close()
        await second.close()
        await other_pool.close()

    entries = await read_chain(pool)
    assert [e.version for e in entries] == list(range(1, 205))
    assert {e.shard for e in entries} == {0}
    assert set(numbers) <= {e.sequence for e in entries}
    assert await verify_ledger(pool) is None


async def test_a_dead_processs_shards_are_taken_over_once_its_lease_expires(db_url, pool):
    dead_pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    dead = Ledger(EventStore(dead_pool), shards=2, lease_seconds=1.0)
    await asyncio.gather(*(dead.record(access(n, "dead")) for n in range(20)))
    its_shards = dead.held
    dead_pool.terminate()  # killed: no release, no renewal

    meanwhile = Ledger(EventStore(pool), shards=2, lease_seconds=1.0)
    await meanwhile.record(access(1, "meanwhile"))
    assert not set(meanwhile.held) & set(its_shards)  # still leased: new numbers
    await asyncio.sleep(1.5)
    heir = Ledger(EventStore(pool), shards=2, lease_seconds=1.0)
    try:
        await asyncio.gather(*(heir.record(access(n, "heir")) for n in range(20)))
        assert heir.held == its_shards
    finally:
        await heir.close()
        await meanwhile.close()
    entries = await read_chain(pool)
    assert len(entries) == 41 and gap_free(entries)
    assert await verify_ledger(pool) is None
    assert await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.ledger_shards") == 4


# -- fail-closed ----------------------------------------------------------------


async def test_while_the_database_refuses_connections_every_caller_is_refused_then_it_recovers(
    db_url, servers
):
    name = db_url.split("?")[0].rsplit("/", 1)[1]
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    admin = await asyncpg.connect(servers.database_url)
    ledger = Ledger(EventStore(pool))
    try:
        first = await ledger.record(access(1))
        # Cut the database off: no new connections, existing ones killed.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        failures = sample("carnet_ledger_failures_total")
        async with asyncio.timeout(10):  # nobody waits forever
            outcomes = await asyncio.gather(
                *(ledger.record(access(n)) for n in range(2, 22)), return_exceptions=True
            )
        assert all(isinstance(o, LedgerUnavailable) for o in outcomes), outcomes
        assert sample("carnet_ledger_failures_total") > failures

        # Back again: the next entry extends the chain where it was.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await ledger.record(access(22)) > first
        assert [e.record for e in await read_chain(pool)] == [access(1), access(22)]
        assert await verify_ledger(pool) is None
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await ledger.close()
        await pool.close()


async def test_a_write_that_hangs_is_refused_after_the_write_timeout(pool):
    ledger = Ledger(EventStore(pool), write_timeout=0.5)
    await ledger.record(access(1))
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute(f"LOCK TABLE {SCHEMA}.events IN ACCESS EXCLUSIVE MODE")
        async with asyncio.timeout(5):
            with pytest.raises(LedgerUnavailable):
                await ledger.record(access(2))
    # The refused write was abandoned, not awaited (a hung server would hold us
    # for its cleanup): it may still land once the lock goes. Recording an
    # access that was not disclosed is the safe mistake; the chain stays whole.
    third = await ledger.record(access(3))
    await ledger.close()
    chain = {e.sequence: e.record for e in await read_chain(pool)}
    assert list(chain.values()) in (
        [access(1), access(3)],
        [access(1), access(2), access(3)],
        [access(1), access(3), access(2)],
    ), chain
    assert chain[third] == access(3)
    assert await verify_ledger(pool) is None


async def test_a_ledger_whose_database_does_not_answer_refuses_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{port}/x", min_size=0)
    ledger = Ledger(EventStore(pool))
    try:
        async with asyncio.timeout(5):
            with pytest.raises(LedgerUnavailable):
                await ledger.record(access(1))
    finally:
        await ledger.close()
        await pool.close()


# -- tamper evidence ------------------------------------------------------------


@pytest.fixture
async def ten_entries(pool) -> asyncpg.Pool:
    """Ten entries on one chain (shard 0)."""
    ledger = Ledger(EventStore(pool), shards=1)
    for n in range(1, 11):
        await ledger.record(access(n))
    await ledger.close()
    assert await verify_ledger(pool) is None
    return pool


async def test_editing_one_stored_entry_is_found_as_altered(ten_entries):
    await ten_entries.execute(
        f"UPDATE {SCHEMA}.events SET state = convert_to(replace("
        "convert_from(state, 'UTF8'), 'appointment-5', 'appointment-9'), 'UTF8') "
        "WHERE originator_id = $1 AND originator_version = 5",
        LEDGER_ID,
    )
    assert await verify_ledger(ten_entries) == Finding(
        "altered", 5, "its record does not match its hash"
    )


async def test_an_entry_overwritten_with_garbage_is_found_as_altered(ten_entries):
    await ten_entries.execute(
        f"UPDATE {SCHEMA}.events SET state = 'not json' "
        "WHERE originator_id = $1 AND originator_version = 3",
        LEDGER_ID,
    )
    finding = await verify_ledger(ten_entries, page=2)
    assert finding is not None and (finding.kind, finding.version) == ("altered", 3)


async def test_deleting_one_entry_is_found_as_deleted(ten_entries):
    await ten_entries.execute(
        f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version = 6",
        LEDGER_ID,
    )
    assert await verify_ledger(ten_entries) == Finding("deleted", 6, "missing: 6")


async def test_a_forged_entry_inserted_in_the_middle_is_found_as_inserted(ten_entries):
    # The forger makes room after entry 4 and writes a properly hashed fake.
    entries = await read_chain(ten_entries)
    await shift_versions(ten_entries, after=4, by=1)
    record = dataclasses.replace(access(4), actor_id="intruder")
    forged = AccessRecorded(
        originator_id=LEDGER_ID,
        originator_version=5,
        timestamp=T0,
        record=record,
        prev_hash=entries[3].hash,
        hash=chain_hash(entries[3].hash, record),
    )
    stored = TypedMapper().to_stored_event(forged)
    await ten_entries.execute(
        f"INSERT INTO {SCHEMA}.events (originator_id, originator_version, topic, state) "
        "VALUES ($1, $2, $3, $4)",
        stored.originator_id,
        stored.originator_version,
        stored.topic,
        stored.state,
    )
    finding = await verify_ledger(ten_entries)
    assert finding is not None and (finding.kind, finding.version) == ("inserted", 5)


async def test_two_entries_swapped_are_found_as_reordered(ten_entries):
    async with ten_entries.acquire() as conn, conn.transaction():
        for old, new in ((7, -7), (8, 7), (-7, 8)):  # via a free number: versions are unique
            await conn.execute(
                f"UPDATE {SCHEMA}.events SET originator_version = $3 "
                "WHERE originator_id = $1 AND originator_version = $2",
                LEDGER_ID,
                old,
                new,
            )
    finding = await verify_ledger(ten_entries)
    assert finding is not None and (finding.kind, finding.version) == ("reordered", 7)


async def shift_versions(pool: asyncpg.Pool, after: int, by: int) -> None:
    """Renumber entries after `after`, through an offset that collides with nothing."""
    async with pool.acquire() as conn, conn.transaction():
        for delta in (1_000_000, by - 1_000_000):
            await conn.execute(
                f"UPDATE {SCHEMA}.events SET originator_version = originator_version + $3 "
                "WHERE originator_id = $1 AND originator_version > $2",
                LEDGER_ID,
                after if delta > 0 else after + 1_000_000,
                delta,
            )
