"""Runs projections: tails the log, applies each batch with its checkpoint in
one transaction, stops loudly on an event it cannot apply, rebuilds into
shadow tables and swaps them in atomically."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from eventsourcing.utils import get_topic

from domain.ledger import AccessRecorded
from infra.codec import TypedMapper
from infra.eventstore import Checkpoint, Connection, EventStore, RecordedEvent
from infra.metrics import PROJECTION_APPLIED, PROJECTION_POSITION, PROJECTION_RUNNING
from infra.waker import sleep_until
from projections import READ_SCHEMA, Op, Projection, Tables

log = logging.getLogger("carnet.projector")
LEDGER_TOPIC = get_topic(AccessRecorded)

CHECKPOINTS = f"{READ_SCHEMA}.projections"
_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {READ_SCHEMA};
CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (
    name text PRIMARY KEY,
    tx xid8 NOT NULL DEFAULT '0',
    position bigint NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'running',
    error text,
    applied bigint NOT NULL DEFAULT 0,
    last_event_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""
SHADOW = "__shadow"


class ProjectionFailed(Exception):
    def __init__(self, name: str, event: RecordedEvent, cause: BaseException) -> None:
        super().__init__(
            f"projection {name!r} cannot apply event {event.position} "
            f"({event.topic}, {event.originator_id} v{event.originator_version}): "
            f"{type(cause).__name__}: {cause}"
        )
        self.position = event.position


class ProjectionStopped(Exception):
    """The projection was stopped on an error; `carnet projections resume` restarts it."""


@dataclass(frozen=True)
class Status:
    name: str
    state: str
    position: int
    applied: int
    lag_events: int
    lag_seconds: float
    error: str | None


class Projector:
    def __init__(
        self,
        pool: asyncpg.Pool,
        projection: Projection,
        mapper: TypedMapper | None = None,
        batch_size: int = 500,
        instance: str | None = None,
    ) -> None:
        self.pool = pool
        self.projection = projection
        self.store = EventStore(pool)
        self.mapper = mapper or TypedMapper()
        self.batch_size = batch_size
        # An instance name lets a second copy (e.g. fed from NATS) keep its own
        # tables and checkpoint; by default every worker shares the one model.
        self.name = instance or projection.name

    def _table(self, logical: str) -> str:
        return f"{self.name}_{logical}"

    def tables(self, suffix: str = "") -> Tables:
        return Tables(READ_SCHEMA, [self._table(t) for t in self.projection.tables], suffix)

    def _logical(self, tables: Tables) -> dict[str, str]:
        return {t: tables[self._table(t)] for t in self.projection.tables}

    async def ensure(self) -> None:
        """Create the checkpoint row and live tables once; safe to call from many workers."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(72810002)")
            await conn.execute(_DDL)
            exists = await conn.fetchval(f"SELECT 1 FROM {CHECKPOINTS} WHERE name = $1", self.name)
            if not exists:
                for statement in self.projection.ddl(self._logical(self.tables())):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {CHECKPOINTS} (name) VALUES ($1)", self.name)

    async def _apply(
        self, conn: Connection, events: Sequence[RecordedEvent], tables: dict[str, str]
    ) -> None:
        """Run the statements of `events` in log order on `conn`, in the caller's transaction.

        Projections are pure, so every statement is built first. A run of one statement
        (consecutive, with parameters) goes to the server as one `executemany`:
        pipelined, one round trip instead of one each. When that saves two round trips
        or more, the runs execute after a SAVEPOINT; should one fail, the batch is
        replayed from it statement by statement, so that the event at fault is named
        exactly as without grouping.
        """
        database_down = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)

        async def one_by_one(ops: list[tuple[RecordedEvent, Op]]) -> None:
            for recorded, op in ops:
                try:
                    await conn.execute(op.sql, *op.args)
                except database_down:
                    raise  # the database, not the event: retry later
                except Exception as e:
                    raise ProjectionFailed(self.name, recorded, e) from e

        ops: list[tuple[RecordedEvent, Op]] = []
        failed: tuple[RecordedEvent, Exception] | None = None
        reads_ledger = getattr(self.projection, "reads_ledger", False)
        for recorded in events:
            if recorded.topic == LEDGER_TOPIC and not reads_ledger:
                continue  # the ledger outnumbers everything; most models ignore it
            try:
                event = self.mapper.to_domain_event(recorded.stored())
                ops += [(recorded, op) for op in self.projection.apply(event, tables)]
            except Exception as e:
                failed = (recorded, e)  # raised after the statements of the events before it
                break
        runs: list[list[tuple[RecordedEvent, Op]]] = []
        for item in ops:
            last = runs[-1][-1][1] if runs else None
            if last is not None and last.args and item[1].args and last.sql == item[1].sql:
                runs[-1].append(item)
            else:
                runs.append([item])
        if len(ops) - len(runs) >= 2:
            await conn.execute("SAVEPOINT carnet_apply")
            try:
                for run in runs:
                    if len(run) == 1:
                        await conn.execute(run[0][1].sql, *run[0][1].args)
                    else:
                        await conn.executemany(run[0][1].sql, [op.args for _, op in run])
            except database_down:
                raise
            except Exception:
                await conn.execute("ROLLBACK TO SAVEPOINT carnet_apply")
                await one_by_one(ops)
        else:
            await one_by_one(ops)
        if failed is not None:
            raise ProjectionFailed(self.name, *failed) from failed[1]

    async def run_once(self) -> int:
        """Apply the next batch; return how many events it held (0: caught up or stopped)."""

        async def next_batch(conn: Connection, after: Checkpoint) -> Sequence[RecordedEvent]:
            return await self.store.read_after(after, self.batch_size, conn)

        return await self._locked_apply(next_batch, stopped_is_error=False)

    async def apply_recorded(self, events: Sequence[RecordedEvent]) -> int:
        """Apply events delivered from elsewhere (NATS), skipping any already applied."""

        async def fresh(conn: Connection, after: Checkpoint) -> Sequence[RecordedEvent]:
            return [e for e in events if e.checkpoint > after]

        return await self._locked_apply(fresh, stopped_is_error=True)

    async def _locked_apply(
        self,
        choose: Callable[[Connection, Checkpoint], Awaitable[Sequence[RecordedEvent]]],
        stopped_is_error: bool,
    ) -> int:
        """Lock the checkpoint row, apply the chosen events and advance, in one transaction.

        The row lock serialises workers of one projection: a second worker
        waits here, then sees the advanced checkpoint.
        """
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"SELECT tx, position, state FROM {CHECKPOINTS} WHERE name = $1 FOR UPDATE",
                    self.name,
                )
                if row is None or row["state"] != "running":
                    PROJECTION_RUNNING.labels(self.name).set(0)
                    if stopped_is_error:
                        raise ProjectionStopped(self.name)
                    return 0
                PROJECTION_RUNNING.labels(self.name).set(1)
                events = await choose(conn, Checkpoint(int(row["tx"]), int(row["position"])))
                if not events:
                    return 0
                await self._apply(conn, events, self._logical(self.tables()))
                last = events[-1]
                await conn.execute(
                    f"""UPDATE {CHECKPOINTS} SET tx = $2, position = $3,
                        applied = applied + $4, last_event_at = $5, updated_at = now()
                    WHERE name = $1""",
                    self.name,
                    last.tx,
                    last.position,
                    len(events),
                    last.recorded_at,
                )
        except ProjectionFailed as e:
            await self._stop(str(e))
            raise
        PROJECTION_APPLIED.labels(self.name).inc(len(events))
        PROJECTION_POSITION.labels(self.name).set(events[-1].position)
        return len(events)

    async def _stop(self, error: str) -> None:
        log.error("%s", error)
        PROJECTION_RUNNING.labels(self.name).set(0)
        await self.pool.execute(
            f"UPDATE {CHECKPOINTS} SET state = 'stopped', error = $2, updated_at = now() "
            "WHERE name = $1",
            self.name,
            error,
        )

    async def resume(self) -> None:
        """Clear a stop (after fixing its cause); the failed event is retried."""
        await self.pool.execute(
            f"UPDATE {CHECKPOINTS} SET state = 'running', error = NULL WHERE name = $1",
            self.name,
        )

    async def checkpoint(self) -> Checkpoint:
        row = await self.pool.fetchrow(
            f"SELECT tx, position FROM {CHECKPOINTS} WHERE name = $1", self.name
        )
        return Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint()

    async def catch_up(self, within: float = 60.0) -> int:
        """Apply until every event committed before the call is applied.

        "Nothing readable" is not "caught up": a transaction still open
        anywhere in the cluster holds the readable horizon back, so wait
        for the head as it was when we were called.
        """
        head = await self.store.head()
        deadline = asyncio.get_running_loop().time() + within
        total = 0
        while True:
            applied = await self.run_once()
            total += applied
            if applied:
                continue
            if await self.checkpoint() >= head:
                return total
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"projection {self.name} did not reach {head}")
            await asyncio.sleep(0.01)

    async def run(self, wake: asyncio.Event, idle: float = 0.5) -> None:
        """Run until cancelled: apply, then sleep until woken (NOTIFY) or `idle` passes.

        The timeout matters: an event becomes readable when the oldest open
        transaction ends, which may be one that wrote nothing and notified no one.
        """
        await self.ensure()
        PROJECTION_RUNNING.labels(self.name).set(1)
        while True:
            try:
                if await self.run_once():
                    continue
            except ProjectionFailed:
                pass  # stopped and recorded; wait for `resume`
            except Exception as e:
                log.warning("projection %s: %s; retrying", self.name, e)
            wake.clear()
            await sleep_until(wake, idle)

    async def rebuild(self) -> int:
        """Build from zero into shadow tables while the live ones serve, then swap."""
        await self.ensure()
        shadow = self.tables(SHADOW)
        shadow_tables = self._logical(shadow)
        async with self.pool.acquire() as conn:
            for table in shadow.values():
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in self.projection.ddl(shadow_tables):
                await conn.execute(statement)
        after, applied = Checkpoint(), 0
        while True:  # the long part, with no lock on the live tables
            async with self.pool.acquire() as conn, conn.transaction():
                events = await self.store.read_after(after, 5000, conn)
                if not events:
                    break
                await self._apply(conn, events, shadow_tables)
            after, applied = events[-1].checkpoint, applied + len(events)
        async with self.pool.acquire() as conn, conn.transaction():
            # Hold the live worker off, take the last events, swap names.
            await conn.fetchrow(
                f"SELECT 1 FROM {CHECKPOINTS} WHERE name = $1 FOR UPDATE", self.name
            )
            last_at: datetime | None = None
            while events := await self.store.read_after(after, 5000, conn):
                await self._apply(conn, events, shadow_tables)
                after, applied = events[-1].checkpoint, applied + len(events)
                last_at = events[-1].recorded_at
            live = self.tables()
            for name, table in live.items():
                bare = table.split(".", 1)[1]
                await conn.execute(f"ALTER TABLE {table} RENAME TO {bare}__old")
                await conn.execute(f"ALTER TABLE {shadow[name]} RENAME TO {bare}")
                await conn.execute(f"DROP TABLE {table}__old")
            await conn.execute(
                f"""UPDATE {CHECKPOINTS} SET tx = $2, position = $3, applied = $4,
                    state = 'running', error = NULL, updated_at = now(),
                    last_event_at = coalesce($5, last_event_at)
                WHERE name = $1""",
                self.name,
                after.tx,
                after.position,
                applied,
                last_at,
            )
        return applied


async def statuses(pool: asyncpg.Pool) -> list[Status]:
    rows = await pool.fetch(
        f"""SELECT p.name, p.state, p.position, p.applied, p.error,
            (SELECT count(*) FROM carnet.events e WHERE (e.tx, e.position) > (p.tx, p.position))
                AS lag_events,
            coalesce(extract(epoch FROM (
                SELECT now() - min(e.recorded_at) FROM carnet.events e
                WHERE (e.tx, e.position) > (p.tx, p.position))), 0) AS lag_seconds
        FROM {CHECKPOINTS} p ORDER BY p.name"""
    )
    return [
        Status(
            r["name"],
            r["state"],
            r["position"],
            r["applied"],
            int(r["lag_events"]),
            float(r["lag_seconds"]),
            r["error"],
        )
        for r in rows
    ]
