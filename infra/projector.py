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
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.utils import get_topic, resolve_topic

from domain.ledger import AccessRecorded
from infra.codec import TypedMapper
from infra.decoder import Decoder
from infra.eventstore import Checkpoint, Connection, EventStore, RecordedEvent
from infra.keyring import opened
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
REBUILD_PAGE = 5000  # events a rebuild reads and applies at a time
_INDEX = re.compile(r"\s*CREATE\s+INDEX\b", re.IGNORECASE)  # not UNIQUE: deferred in a rebuild
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


# Argument types that hold no text: nothing to make storable (checked by exact type).
_TEXTLESS = frozenset({UUID, int, float, bool, type(None), datetime, date})


def bound(op: Op) -> Op:
    """The statement with every string argument made storable (see the module docstring)."""
    for arg in op.args:  # one cheap pass: most statements have nothing to replace
        if arg.__class__ in _TEXTLESS:
            continue
        if isinstance(arg, list | tuple) or (isinstance(arg, str) and storable(arg) is not arg):
            return replace(op, args=tuple(_storable(a) for a in op.args))
    return op


Item = tuple[RecordedEvent, Op]
# What a projector does with an event of a topic: nothing (the ledger, for a model
# that does not read it), only check that it decodes (a kind outside the model's
# `handles`: an undecodable event still stops it), or decode and apply it.
_SKIP, _CHECK, _APPLY = "skip", "check", "apply"


def schedule(ops: Sequence[Item]) -> list[list[Item]]:
    """The statements in groups, each group one statement sent once, in an order
    that gives the same tables as running them one by one in log order.

    A keyed Op goes into the earliest level after every earlier Op that wrote a
    row it reads or writes, or read a row it writes (and after the last plain
    Op); within a level, the Ops of one statement form one group. A plain Op
    (no key) is ordered against everything: it gets a level of its own, shared
    only with the plain Ops of the same statement right before it (sent as one
    `executemany`, as they always were).
    """
    # Rows are tracked by their hash: two rows that share one are only ordered
    # when they need not be, never the reverse (and a UUID hashes in Python).
    written: dict[int, int] = {}  # row -> level of its last writer
    read: dict[int, int] = {}  # row -> highest level that read it
    levels: list[dict[str, list[Item]]] = []
    floor = 0  # the level of the last plain Op: every later one goes above it
    for item in ops:
        op = item[1]
        if op.key is None:
            last = levels[-1] if levels else None
            if not (floor == len(levels) and last is not None and op.sql in last):
                levels.append({})
                floor = len(levels)
            levels[-1].setdefault(op.sql, []).append(item)
            continue
        key = hash(op.key)
        reads = [hash(row) for row in op.reads]
        level = max(floor, written.get(key, 0), read.get(key, 0))
        for row in reads:
            level = max(level, written.get(row, 0))
        level += 1
        if level > len(levels):
            levels.append({})
        levels[level - 1].setdefault(op.sql, []).append(item)
        written[key] = level
        for row in reads:
            if read.get(row, 0) < level:
                read[row] = level
    return [group for level in levels for group in level.values()]


async def _run_group(conn: Connection, group: list[Item]) -> None:
    """One statement for the group: keyed Ops with one array per argument (their
    rows), plain Ops as they are (several as one pipelined executemany)."""
    op = group[0][1]
    if op.key is not None:
        columns = [list(c) for c in zip(*(o.args for _, o in group), strict=True)]
        await conn.execute(op.sql, *columns)
    elif len(group) == 1:
        await conn.execute(op.sql, *op.args)
    else:
        await conn.executemany(op.sql, [o.args for _, o in group])


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


class _Asking:
    """A mapper that is not a plain TypedMapper, asked for every event itself."""

    def __init__(self, mapper: TypedMapper) -> None:
        self.mapper = mapper

    def decode(self, recorded: RecordedEvent) -> object:
        return self.mapper.to_domain_event(recorded.stored())

    def check(self, recorded: RecordedEvent) -> None:
        self.decode(recorded)


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
        # The mapper's domain events by the shorter road where it gives the same
        # (infra/decoder.py); a mapper of another kind is asked itself.
        plain = type(self.mapper) is TypedMapper
        self._uses: dict[str, str] = {}  # topic -> _SKIP, _CHECK or _APPLY
        self.decoder = Decoder(self.mapper) if plain else _Asking(self.mapper)
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

    def _ops(
        self, events: Sequence[RecordedEvent], tables: dict[str, str]
    ) -> tuple[list[Item], tuple[RecordedEvent, Exception] | None]:
        """Every statement of `events` in log order, and the first event that failed (if any).

        Projections are pure, so every statement is built before any runs; a failed
        event's statements are those of the events before it.
        """
        ops: list[Item] = []
        decode, check, apply = self.decoder.decode, self.decoder.check, self.projection.apply
        uses = self._uses
        for recorded in events:
            use = uses.get(recorded.topic)
            if use is None:
                use = uses[recorded.topic] = self._use(recorded.topic)
            if use is _SKIP:
                continue
            try:
                if use is _CHECK:
                    check(recorded)
                    continue
                event: Any = decode(recorded)
                if recorded.topic == LEDGER_TOPIC:
                    # Sealed client address and user agent, opened for the read model.
                    event = replace(event, record=opened(event.record))
                for op in apply(event, tables):
                    ops.append((recorded, bound(op)))
            except Exception as e:
                return ops, (recorded, e)
        return ops, None

    def _use(self, topic: str) -> str:
        """What this projection does with events of `topic` (see _SKIP, _CHECK, _APPLY)."""
        if topic == LEDGER_TOPIC and not getattr(self.projection, "reads_ledger", False):
            return _SKIP  # the ledger outnumbers everything; most models ignore it
        handles = getattr(self.projection, "handles", None)
        if handles is not None:
            try:
                named = resolve_topic(topic).__qualname__  # a topic may name a renamed class
            except Exception:
                return _APPLY  # decoding it will say what is wrong
            if named not in handles:
                return _CHECK
        return _APPLY

    async def _apply(
        self, conn: Connection, events: Sequence[RecordedEvent], tables: dict[str, str]
    ) -> None:
        """Run the statements of `events` on `conn`, in the caller's transaction.

        They run grouped (`schedule`): the keyed Ops of one statement as one set-based
        statement, runs of one plain statement as one pipelined `executemany`. When that
        saves two statements or more, the groups run after a SAVEPOINT; should one fail,
        the batch is replayed from it statement by statement in log order, so that the
        event at fault is named exactly as without grouping.

        A transient fault propagates as it is (the caller rolls back and retries);
        any other failure of an event is raised as ProjectionFailed, naming it.
        """
        ops, failed = self._ops(events, tables)
        groups = schedule(ops)
        if len(ops) - len(groups) >= 2:
            await conn.execute("SAVEPOINT carnet_apply")
            try:
                for group in groups:
                    await _run_group(conn, group)
            except Exception as e:
                if database_unavailable(e):
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT carnet_apply")
                await self._one_by_one(conn, ops)
        else:
            await self._one_by_one(conn, ops)
        if failed is not None:
            raise ProjectionFailed(self.name, *failed) from failed[1]

    async def _one_by_one(self, conn: Connection, ops: list[Item]) -> None:
        for recorded, op in ops:
            try:
                await _run_group(conn, [(recorded, op)])
            except Exception as e:
                if database_unavailable(e):
                    raise  # the database, not the event: retry later
                raise ProjectionFailed(self.name, recorded, e) from e

    async def run_once(self) -> int:
        """Apply the next batch; return how many events it held (0: caught up or stopped)."""

        async def next_batch(conn: Connection, after: Checkpoint) -> Sequence[RecordedEvent]:
            return await self.store.read_after(after, self.batch_size, conn, metadata=False)

        return await self._locked_apply(next_batch, stopped_is_error=False)

    async def apply_recorded(self, events: Sequence[RecordedEvent]) -> int:
        """Apply events delivered from elsewhere (NATS), skipping any already applied."""

        async def fresh(conn: Connection, after: Checkpoint) -> Sequence[RecordedEvent]:
            return [e for e in events if e.checkpoint > after]

        # Not read through the store: their keys are loaded here (infra/keyring.py).
        await self.store.load_keys(e.state for e in events)
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

    async def _page(self, after: Checkpoint, conn: Connection | None = None) -> list[RecordedEvent]:
        return await self.store.read_after(after, REBUILD_PAGE, conn, metadata=False)

    async def rebuild(self) -> int:
        """Build from zero into shadow tables while the live ones serve, then swap.

        The long part takes no lock on the live tables. Pages of REBUILD_PAGE events
        are each applied in one transaction, with set-based statements (`schedule`),
        while the next page is being read; the shadow tables' secondary indexes
        (plain `CREATE INDEX`, never a unique one: those check rows as they come)
        are built once the pages are in, which costs less than keeping them up to
        date row by row. Then, holding the live worker off, the last events are
        applied and the tables swapped in one transaction.
        """
        await self.ensure()
        shadow = self.tables(SHADOW)
        shadow_tables = self._logical(shadow)
        ddl = self.projection.ddl(shadow_tables)
        indexes = [s for s in ddl if _INDEX.match(s)]
        async with self.pool.acquire() as conn:
            for table in shadow.values():
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in ddl:
                if statement not in indexes:
                    await conn.execute(statement)
        after, applied = Checkpoint(), 0
        reading = asyncio.ensure_future(self._page(after))
        try:
            while events := await reading:
                reading = asyncio.ensure_future(self._page(events[-1].checkpoint))
                async with self.pool.acquire() as conn, conn.transaction():
                    await self._apply(conn, events, shadow_tables)
                after, applied = events[-1].checkpoint, applied + len(events)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
        async with self.pool.acquire() as conn:
            for statement in indexes:
                await conn.execute(statement)
        async with self.pool.acquire() as conn, conn.transaction():
            # Hold the live worker off, read the last events, then apply them and swap
            # names: all the reading before the first write, as in `_locked_apply`.
            await conn.execute(_LOCK, PROJECTION_LOCK, self.name)
            tail: list[RecordedEvent] = []
            while events := await self._page(after, conn):
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
