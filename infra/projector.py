"""Runs projections: tails the log, applies each batch with its checkpoint in
one transaction, stops loudly on an event it cannot apply, rebuilds into
shadow tables and swaps them in atomically.

What stops a projection, and what does not:

- Client data never does. Every statement argument is bound through
  `projections.base.storable` (jsonb values through `as_json`): PostgreSQL
  text cannot hold U+0000 and UTF-8 cannot hold a lone surrogate, so each
  becomes U+FFFD, the replacement character, and nothing else changes. This
  holds for events already in the log, since it happens when they are
  applied, not when they were written.
- A database fault that may pass does not either: the database unreachable,
  a statement or lock timeout, a cancelled statement, a deadlock or a
  serialisation failure, all as `infra.pgerrors.database_unavailable`
  classifies them for the HTTP layer too. The batch rolls back and `run` retries it with
  capped exponential backoff, for as long as it takes.
- Anything else that fails while applying an event is a bug in our code (a
  projection that cannot handle an event, SQL the server refuses): the
  projection stops on that event, names it, and waits for `resume`.

Workers of one projection serialise on a transaction-scoped advisory lock
keyed on the projection's name, which assigns no transaction id. A batch
reads its checkpoint and its events before its first write, so it holds an
xid (which holds back `pg_snapshot_xmin`, the log's readable horizon, for
every reader) only while it writes, not while it waits, reads and decodes.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import asyncpg
from eventsourcing.utils import get_topic

from domain.ledger import AccessRecorded
from infra.codec import TypedMapper
from infra.eventstore import Checkpoint, Connection, EventStore, RecordedEvent
from infra.metrics import PROJECTION_APPLIED, PROJECTION_POSITION, PROJECTION_RUNNING
from infra.pgerrors import database_unavailable
from infra.waker import sleep_until
from projections import READ_SCHEMA, Op, Projection, Tables
from projections.base import storable

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
# pg_advisory_xact_lock(PROJECTION_LOCK, hashtext(name)): one lock per projection.
PROJECTION_LOCK = 72810004
_LOCK = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
RETRY_FIRST, RETRY_MAX = 0.05, 5.0  # seconds: the backoff of `run` on a transient fault


def _storable(value: object) -> object:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable(v) for v in value]  # text[] and other arrays
    if isinstance(value, tuple):
        return tuple(_storable(v) for v in value)
    return value


def bound(op: Op) -> Op:
    """The statement with every string argument made storable (see the module docstring)."""
    for arg in op.args:  # one cheap pass: most statements have nothing to replace
        if isinstance(arg, list | tuple) or (isinstance(arg, str) and storable(arg) is not arg):
            return Op(op.sql, tuple(_storable(a) for a in op.args))
    return op


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

        A transient fault propagates as it is (the caller rolls back and retries);
        any other failure of an event is raised as ProjectionFailed, naming it.
        """

        async def one_by_one(ops: list[tuple[RecordedEvent, Op]]) -> None:
            for recorded, op in ops:
                try:
                    await conn.execute(op.sql, *op.args)
                except Exception as e:
                    if database_unavailable(e):
                        raise  # the database, not the event: retry later
                    raise ProjectionFailed(self.name, recorded, e) from e

        ops: list[tuple[RecordedEvent, Op]] = []
        failed: tuple[RecordedEvent, Exception] | None = None
        reads_ledger = getattr(self.projection, "reads_ledger", False)
        for recorded in events:
            if recorded.topic == LEDGER_TOPIC and not reads_ledger:
                continue  # the ledger outnumbers everything; most models ignore it
            try:
                event = self.mapper.to_domain_event(recorded.stored())
                ops += [(recorded, bound(op)) for op in self.projection.apply(event, tables)]
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
            except Exception as e:
                if database_unavailable(e):
                    raise
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
        """Lock the projection, apply the chosen events and advance, in one transaction.

        The advisory lock serialises workers of one projection: a second worker
        waits here, then (a new statement, a new snapshot) sees the advanced
        checkpoint. Unlike `SELECT … FOR UPDATE` it assigns no transaction id;
        the first write, after every read, does.
        """
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(_LOCK, PROJECTION_LOCK, self.name)
                row = await conn.fetchrow(
                    f"SELECT tx, position, state FROM {CHECKPOINTS} WHERE name = $1", self.name
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
        A failed attempt is retried after a backoff that doubles up to RETRY_MAX
        (jittered, so that many workers do not return at once); only a
        ProjectionFailed stops the projection, and then this waits for `resume`.
        """
        ready, failures = False, 0
        while True:
            try:
                if not ready:
                    await self.ensure()
                    PROJECTION_RUNNING.labels(self.name).set(1)
                    ready = True
                applied = await self.run_once()
                failures = 0
                if applied:
                    continue
            except ProjectionFailed:
                failures = 0  # stopped and recorded; wait for `resume`
            except Exception as e:
                failures += 1
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(failures - 1, 16))
                if database_unavailable(e):
                    log.warning("projection %s: %r; retrying in %.2f s", self.name, e, delay)
                else:  # not tied to an event (e.g. the checkpoint): our bug, kept visible
                    log.error("projection %s: retrying in %.2f s", self.name, delay, exc_info=e)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
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
            # Hold the live worker off, read the last events, then apply them and swap
            # names: all the reading before the first write, as in `_locked_apply`.
            await conn.execute(_LOCK, PROJECTION_LOCK, self.name)
            tail: list[RecordedEvent] = []
            while events := await self.store.read_after(after, 5000, conn):
                tail += events
                after = events[-1].checkpoint
            last_at: datetime | None = None
            if tail:
                await self._apply(conn, tail, shadow_tables)
                applied, last_at = applied + len(tail), tail[-1].recorded_at
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
