"""One access entry that cannot be written fails only its own caller: the
others in its group-committed batch are written, the chain stays gap-free
and verifiable, and the next entry chains onto the right head."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from domain.ledger import AccessRecord
from infra.eventstore import EventStore
from infra.ledger import Ledger, LedgerUnavailable, UnwritableEntry, read_chain, verify_ledger

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


def access(n: int) -> AccessRecord:
    return AccessRecord(
        actor_kind="patient",
        actor_id=f"patient-{n}",
        action="read",
        resource_type="appointment",
        record_ids=(f"appointment-{n}",),
        at=T0 + timedelta(milliseconds=n),
        request_id=f"request-{n}",
        user_agent="curl/8",
    )


def poisoned(n: int) -> AccessRecord:
    # What aiohttp hands on for the byte 0xFF in a header: a lone surrogate.
    return dataclasses.replace(access(n), user_agent="bot\udcff")


@pytest.fixture
async def ledger(pool: asyncpg.Pool) -> AsyncIterator[Ledger]:
    # A long interval: every caller below lands in the same batch.
    ledger = Ledger(EventStore(pool), interval=0.05)
    yield ledger
    await ledger.close()


async def test_an_unencodable_record_fails_only_its_own_caller(pool: asyncpg.Pool, ledger: Ledger):
    records = [poisoned(n) if n == 50 else access(n) for n in range(100)]

    results = await asyncio.gather(*(ledger.record(r) for r in records), return_exceptions=True)

    failed = [n for n, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [50]
    # The caller learns its own entry is at fault, not that the ledger is down.
    assert isinstance(results[50], UnwritableEntry)
    assert not isinstance(results[50], LedgerUnavailable)
    numbers = [r for r in results if isinstance(r, int)]
    assert sorted(numbers) == list(range(1, 100))
    by_version = {e.version: e.record for e in await read_chain(pool)}
    assert len(by_version) == 99
    assert all(by_version[v] == access(n) for n, v in enumerate(numbers[:50]))
    assert await verify_ledger(pool) is None
    # The chain head is still right: the next entry follows on.
    assert await ledger.record(access(100)) == 100
    assert await verify_ledger(pool) is None


async def test_bad_records_spread_over_many_batches_fail_alone(pool: asyncpg.Pool):
    ledger = Ledger(EventStore(pool), interval=0.01, max_batch=16)
    records = [poisoned(n) if n % 7 == 3 else access(n) for n in range(200)]

    results = await asyncio.gather(*(ledger.record(r) for r in records), return_exceptions=True)
    await ledger.close()

    bad = {n for n in range(200) if n % 7 == 3}
    assert {n for n, r in enumerate(results) if isinstance(r, BaseException)} == bad
    assert all(isinstance(results[n], UnwritableEntry) for n in bad)
    chain = await read_chain(pool)
    assert len(chain) == 200 - len(bad)
    for shard in {e.shard for e in chain}:  # every shard's chain is gap-free
        versions = [e.version for e in chain if e.shard == shard]
        assert versions == list(range(1, len(versions) + 1))
    assert all("\udcff" not in e.record.user_agent for e in chain)
    assert await verify_ledger(pool) is None
