"""Benchmark 1: event-store appends/s against raw single-row INSERTs, same run, same pool.

Ours: a new appointment's `Booked` event goes through the TypedMapper (inside the timed
loop) and `EventStore.append` (one transaction: BEGIN, INSERT … unnest … RETURNING,
COMMIT). Baseline: the same stored bytes, one autocommit `INSERT … VALUES` per event, into
a table with the same columns, defaults and indexes as carnet.events. Both share one
asyncpg pool configured as production configures it (infra.bootstrap.open_pool).
"""

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import msgspec
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import StoredEvent

from domain.agenda import Appointment
from domain.values import Source
from infra import eventstore
from infra.bootstrap import open_pool
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.schema import SCHEMA
from infra.settings import Settings
from services.ports import Metadata
from tests.bench.common import (
    Config,
    Result,
    Run,
    Side,
    drive,
    fresh_database,
    median_rate,
    paired_ratios,
    rounds,
    say,
)

RAW_DDL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE bench.raw_events (
    position bigserial PRIMARY KEY,
    originator_id uuid NOT NULL,
    originator_version integer NOT NULL,
    topic text NOT NULL,
    state bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
    metadata jsonb NOT NULL DEFAULT '{}',
    UNIQUE (originator_id, originator_version)
);
CREATE INDEX raw_events_tx_position ON bench.raw_events (tx, position);
"""
RAW_INSERT = """
INSERT INTO bench.raw_events (originator_id, originator_version, topic, state, metadata)
VALUES ($1, $2, $3, $4, $5::jsonb)
"""

# What an HTTP request by a desk clerk records with its events.
META = Metadata(
    actor_kind="staff",
    actor_id=str(uuid4()),
    request_id=uuid4().hex,
    correlation_id=uuid4().hex,
    token_id=str(uuid4()),
)
META_JSON = msgspec.json.encode(META).decode()
START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

Op = Callable[[int], Awaitable[Any]]


def new_appointments(n: int) -> list[Appointment]:
    """`n` freshly booked appointments, each holding its one pending `Booked` event."""
    return [
        Appointment(
            patient_id=uuid4(),
            practitioner_id=uuid4(),
            establishment_id=uuid4(),
            motive_id="consultation",
            start=START + timedelta(minutes=20 * i),
            end=START + timedelta(minutes=20 * i + 20),
            source=Source.STAFF,
        )
        for i in range(n)
    ]


def booked_events(n: int) -> list[CanMutateAggregate[UUID]]:
    return [e for a in new_appointments(n) for e in a.collect_events()]


def stored_events(n: int) -> list[StoredEvent]:
    mapper = TypedMapper()
    return [mapper.to_stored_event(e) for e in booked_events(n)]


async def open_bench_pool(url: str, size: int) -> asyncpg.Pool:
    pool = await open_pool(url, Settings(pool_min=size, pool_max=size))
    async with pool.acquire() as conn:
        await conn.execute(RAW_DDL)
    return pool


# -- the operations -----------------------------------------------------------
# Each factory pre-builds `n` inputs outside the timed loop and returns an op that
# consumes one per call.


def raw_insert(pool: asyncpg.Pool, n: int) -> Op:
    events: Iterator[StoredEvent] = iter(stored_events(n))

    async def op(_: int) -> None:
        e = next(events)
        await pool.execute(
            RAW_INSERT, e.originator_id, e.originator_version, e.topic, e.state, META_JSON
        )

    return op


def ours(pool: asyncpg.Pool, n: int) -> Op:
    store = EventStore(pool)
    mapper = TypedMapper()
    events: Iterator[CanMutateAggregate[UUID]] = iter(booked_events(n))

    async def op(_: int) -> None:
        await store.append([mapper.to_stored_event(next(events))], META)

    return op


# Diagnostics only: which part of EventStore.append costs what.


def raw_insert_in_transaction(pool: asyncpg.Pool, n: int) -> Op:
    events = iter(stored_events(n))

    async def op(_: int) -> None:
        e = next(events)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                RAW_INSERT, e.originator_id, e.originator_version, e.topic, e.state, META_JSON
            )

    return op


def unnest_autocommit(pool: asyncpg.Pool, n: int, sql: str) -> Op:
    """The event store's own INSERT statement, without its transaction (on the twin table)."""
    events = iter(stored_events(n))

    async def op(_: int) -> None:
        e = next(events)
        await pool.fetch(
            sql, [e.originator_id], [e.originator_version], [e.topic], [e.state], META_JSON
        )

    return op


def append_premapped(pool: asyncpg.Pool, n: int) -> Op:
    store = EventStore(pool)
    events = iter(stored_events(n))

    async def op(_: int) -> None:
        await store.append([next(events)], META)

    return op


# -- the benchmark --------------------------------------------------------------


def side(label: str, make: Callable[[int], Op], cfg: Config, count: int) -> Side:
    """A side of a comparison: each call pre-builds `count` inputs, then drives them."""

    async def measure() -> Run:
        op = make(count)
        return await drive(
            op, concurrency=cfg.concurrency, count=count, max_seconds=cfg.max_seconds
        )

    return label, measure


RAW = "raw INSERT (autocommit)"
OURS = "ours: TypedMapper + EventStore.append"


async def bench_append(server: str, cfg: Config) -> Result:
    say(
        f"\n[1] appends/s: EventStore.append vs raw INSERT "
        f"({cfg.concurrency} tasks, {cfg.append_count} events x {cfg.append_rounds} rounds)"
    )
    async with fresh_database(server, "append") as url:
        pool = await open_bench_pool(url, cfg.concurrency)
        try:
            runs = await rounds(
                [
                    side(RAW, lambda n: raw_insert(pool, n), cfg, cfg.append_count),
                    side(OURS, lambda n: ours(pool, n), cfg, cfg.append_count),
                ],
                cfg.append_rounds,
            )
            result = Result(
                "[1] EventStore.append/s",
                median_rate(runs[OURS]),
                median_rate(runs[RAW]),
                "raw INSERT/s",
                "/s",
                0.8,
                f"{cfg.concurrency} tasks over one pool; one "
                f"{len(stored_events(1)[0].state)}-byte Appointment.Booked event per append",
                paired_ratios(runs[OURS], runs[RAW]),
            )
            if cfg.diagnose or result.verdict == "MISS":
                await diagnose(url, pool, cfg)
        finally:
            await pool.close()
    return result


def without_triggers(pool: asyncpg.Pool, measured: Side) -> Side:
    """The same measurement with the user triggers of the events table disabled (our own
    throwaway database: this changes nothing outside the benchmark)."""
    label, measure = measured

    async def measure_without() -> Run:
        await pool.execute(f"ALTER TABLE {SCHEMA}.events DISABLE TRIGGER USER")
        try:
            return await measure()
        finally:
            await pool.execute(f"ALTER TABLE {SCHEMA}.events ENABLE TRIGGER USER")

    return label, measure_without


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def diagnose(url: str, pool: asyncpg.Pool, cfg: Config) -> None:
    """What separates EventStore.append from the raw INSERT, one thing at a time."""
    say("    breakdown: each line changes one thing; ratios against the pooled raw INSERT")
    count = max(cfg.warmup, cfg.append_count // 2)
    # asyncpg's default release runs a reset query: one more round trip per acquire.
    bare = await asyncpg.create_pool(
        url, min_size=cfg.concurrency, max_size=cfg.concurrency, reset=_no_reset
    )
    base = "raw INSERT, pooled (the baseline)"
    premapped = "EventStore.append, pre-mapped"
    sides = [
        side("raw INSERT, pool without its reset query", lambda n: raw_insert(bare, n), cfg, count),
        side(base, lambda n: raw_insert(pool, n), cfg, count),
        side(
            "raw INSERT in BEGIN/COMMIT", lambda n: raw_insert_in_transaction(pool, n), cfg, count
        ),
    ]
    # Private, so it may change shape: measured only while it takes the same five parameters.
    sql = getattr(eventstore, "_INSERT", None)
    table = f"{SCHEMA}.events"
    if isinstance(sql, str) and "$5" in sql and "$6" not in sql and table in sql:
        twin = sql.replace(table, "bench.raw_events")
        label = "our unnest INSERT…RETURNING, autocommit"
        sides.append(side(label, lambda n: unnest_autocommit(pool, n, twin), cfg, count))
    triggers = [
        r[0]
        for r in await pool.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal",
            table,
        )
    ]
    if triggers:
        say(f"    {table} has trigger(s): {', '.join(triggers)}")
        label = f"{premapped}, {table} triggers off"
        sides.append(
            without_triggers(pool, side(label, lambda n: append_premapped(pool, n), cfg, count))
        )
    sides += [
        side(premapped, lambda n: append_premapped(pool, n), cfg, count),
        side("TypedMapper + EventStore.append (ours)", lambda n: ours(pool, n), cfg, count),
    ]
    try:
        runs = await rounds(sides, cfg.append_rounds)
    finally:
        await bare.close()
    for label, _ in sides:
        ratio = statistics.median(paired_ratios(runs[label], runs[base]))
        cpu = statistics.median(r.cpu_per_op for r in runs[label]) * 1e6
        say(
            f"    = {label:<56} {median_rate(runs[label]):>6,.0f}/s {ratio:5.2f}x, "
            f"client CPU {cpu:4.0f} µs/op"
        )


def main() -> None:  # pragma: no cover - manual use: python -m tests.bench.append
    from tests.bench.common import server_url

    with server_url() as server:
        result = asyncio.run(bench_append(server, Config(diagnose=True)))
    say(str(result))
