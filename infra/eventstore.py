"""The event store: an append-only PostgreSQL table reached through asyncpg.

No global lock: appends are plain INSERTs; optimistic concurrency comes from
the unique (originator_id, originator_version) constraint.
"""

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from eventsourcing.persistence import StoredEvent

from infra.keyring import keyring_of, subjects_in
from infra.metrics import EVENTS_APPENDED, VERSION_CONFLICTS
from infra.pgerrors import database_unavailable
from infra.schema import SCHEMA
from services.ports import (
    Idempotency,
    IdempotentResult,
    Metadata,
    StaleRead,
    Unavailable,
    VersionConflict,
)

# One statement, so one round trip and an implicit transaction: the events
# and, when there is one, the Idempotency-Key claim commit together.
# $10/$11: the aggregates the write was decided on without reading the log
# (each id at the version it had): if any is no longer at that version in the
# log, nothing is inserted and the statement answers NULL (a stale read).
_APPEND_TEMPLATE = """
WITH {first}appended AS (
    INSERT INTO {schema}.events (originator_id, originator_version, topic, state, metadata)
    SELECT u.id, u.version, u.topic, u.state, $5::jsonb
    FROM {source}unnest($1::uuid[], $2::int[], $3::text[], $4::bytea[])
        AS u(id, version, topic, state)
    WHERE NOT EXISTS (
        SELECT 1 FROM unnest($10::uuid[], $11::int[]) AS r(id, v)
        WHERE EXISTS (SELECT 1 FROM {schema}.events e
                      WHERE e.originator_id = r.id AND e.originator_version > r.v)
           OR (r.v > 0 AND NOT EXISTS (SELECT 1 FROM {schema}.events e
                      WHERE e.originator_id = r.id AND e.originator_version = r.v)))
    RETURNING position
), claimed AS (
    INSERT INTO {schema}.idempotency_keys (scope, key, request_hash, result, position)
    SELECT $6, $7, $8, $9, last FROM (SELECT max(position) AS last FROM appended) a
    WHERE $6::text IS NOT NULL AND last IS NOT NULL
)
SELECT max(position) FROM appended
"""
_APPEND = _APPEND_TEMPLATE.format(first="", source="", schema=SCHEMA)


def ordered_append(lock: str) -> str:
    """`_APPEND` that first takes `lock` (an advisory transaction lock, held to the
    commit): in autocommit, the lock is held for this one statement and its commit."""
    return _APPEND_TEMPLATE.format(
        first=f"ordered AS ({lock}), ", source="ordered, ", schema=SCHEMA
    )


# The log's readable horizon: the oldest transaction still running that could
# write to it. Below it, everything has either committed or rolled back, so
# no row can commit "behind" a reader. That is the snapshot's xmin, except
# that transaction ids are cluster-wide: a transaction that pg_stat_activity
# shows running in another database can never write this log, and must not
# hold it back (another application, or another Carnet, on the same server).
# Only such a definite attribution drops an xid; any xid it cannot place
# (a subtransaction, a prepared transaction, a backend that just ended)
# still counts, as before. The low 32 bits of an xid8 are its xid: running
# xids are never 2^32 apart.
HORIZON = """(SELECT coalesce(
    (SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
     WHERE NOT EXISTS (
        SELECT 1 FROM pg_stat_activity a
        WHERE a.backend_xid::text = (x::text::numeric % 4294967296)::text
          AND a.datid <> (SELECT d.oid FROM pg_database d
                          WHERE d.datname = current_database()))),
    pg_snapshot_xmax(pg_current_snapshot())))"""
# Only rows of transactions that can no longer commit "behind" us are visible.
_READ_AFTER = f"""
SELECT position, tx, originator_id, originator_version, topic, state, recorded_at, metadata
FROM {SCHEMA}.events
WHERE (tx, position) > ($1::xid8, $2::bigint)
  AND tx < {HORIZON}
ORDER BY tx, position
LIMIT $3
"""
# The same without the metadata, for readers that never look at it (projectors):
# its JSON, read and decoded for every event, cost a third of reading a page.
_READ_AFTER_LEAN = _READ_AFTER.replace(", recorded_at, metadata", ", recorded_at, NULL")
_COLUMNS = "position, tx, originator_id, originator_version, topic, state, recorded_at, metadata"
_SELECT = f"SELECT {_COLUMNS} FROM {SCHEMA}.events"
_AGGREGATE_UNTIL = (
    f"{_SELECT} WHERE originator_id = $1 AND position <= $2 ORDER BY originator_version"
)
_AGGREGATE_UNTIL_TX = f"""{_SELECT} WHERE originator_id = $1
AND (tx, position) <= ($2::xid8, $3::bigint) ORDER BY originator_version"""
_AGGREGATES = f"""{_SELECT} WHERE originator_id = ANY($1::uuid[])
ORDER BY originator_id, originator_version"""
# The last condition involves no row: the planner checks it once (a one-time
# filter), so the page is empty until no transaction below `until` can commit.
_READ_UNTIL = f"""{_SELECT}
WHERE (tx, position) > ($1::xid8, $2::bigint) AND (tx, position) <= ($3::xid8, $4::bigint)
  AND $3::xid8 < {HORIZON}
ORDER BY tx, position
LIMIT $5
"""
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


@dataclass(frozen=True, order=True)
class Checkpoint:
    tx: int = 0
    position: int = 0


@dataclass(frozen=True)
class RecordedEvent:
    position: int
    tx: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes
    recorded_at: datetime
    metadata: dict[str, Any]

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.tx, self.position)

    def stored(self) -> StoredEvent:
        return StoredEvent(self.originator_id, self.originator_version, self.topic, self.state)


_FIELDS = tuple(f.name for f in fields(RecordedEvent))  # the order _COLUMNS selects them in


def _recorded(r: asyncpg.Record) -> RecordedEvent:
    # Once per event read, so not through the frozen dataclass's __init__, which
    # sets each field with object.__setattr__ (a third of the cost of a row).
    event = object.__new__(RecordedEvent)
    event.__dict__.update(zip(_FIELDS, r, strict=True))
    event.__dict__["metadata"] = msgspec.json.decode(r[7])
    return event


def _recorded_lean(r: asyncpg.Record) -> RecordedEvent:
    """As `_recorded`, with the metadata left empty (not read)."""
    event = object.__new__(RecordedEvent)
    event.__dict__.update(zip(_FIELDS, r, strict=True))
    event.__dict__["metadata"] = {}
    return event


_meta_encoder = msgspec.json.Encoder()
log = logging.getLogger("carnet.eventstore")
CHANNEL = "carnet_events"


class Notifier:
    """NOTIFY the log's listeners after commits, at most one NOTIFY in flight.

    Appends that commit while a NOTIFY is on its way are covered by one more
    NOTIFY right after it, so a burst of writes costs a few notifications,
    not one each, and no append waits for them.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._sending: asyncio.Task[None] | None = None
        self._again = False

    def poke(self) -> None:
        if self._sending is not None and not self._sending.done():
            self._again = True
            return
        self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while True:
            self._again = False
            try:
                await self.pool.execute("SELECT pg_notify($1, '')", CHANNEL)
            except Exception as e:  # listeners fall back to polling; never fail a write
                log.debug("NOTIFY failed: %s", e)
                return
            if not self._again:
                return


class EventStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.notifier = Notifier(pool)
        # Crypto-shredding (infra/keyring.py): what is read, its keys loaded
        # before anyone decodes it. None: a pool that open_pool did not make.
        self.keyring = keyring_of(pool)

    async def load_keys(self, states: Iterable[bytes]) -> None:
        """The data keys these stored states need, loaded (for events read elsewhere)."""
        if self.keyring is not None and (subjects := subjects_in(states)):
            await self.keyring.load(subjects)

    async def append(
        self,
        events: Sequence[StoredEvent],
        meta: Metadata,
        idempotency: Idempotency | None = None,
        unchanged: Sequence[tuple[UUID, int]] = (),
    ) -> int:
        """Insert all events atomically; return the last position."""
        try:
            async with self.pool.acquire() as conn:
                position = await self.append_on(
                    conn, events, meta, idempotency, unchanged=unchanged
                )
        except asyncpg.UniqueViolationError as e:
            VERSION_CONFLICTS.inc()
            raise VersionConflict(str(e)) from None
        except Exception as e:
            if database_unavailable(e):
                raise Unavailable(str(e)) from e
            raise
        self.notifier.poke()
        return position

    @staticmethod
    async def append_on(
        conn: Connection,
        events: Sequence[StoredEvent],
        meta: Metadata,
        idempotency: Idempotency | None = None,
        sql: str = _APPEND,
        unchanged: Sequence[tuple[UUID, int]] = (),
    ) -> int:
        """Insert on a given connection (in the caller's transaction, if it has one).

        `sql`: `_APPEND` or an `ordered_append`. `unchanged`: (id, version) of
        aggregates the write relied on, read from memory rather than the log:
        StaleRead, and nothing inserted, if any of them has moved on."""
        if not events:
            raise ValueError("nothing to append")
        claim = (
            (idempotency.scope, idempotency.key, idempotency.request_hash, idempotency.result)
            if idempotency is not None
            else (None, None, None, None)
        )
        position = await conn.fetchval(
            sql,
            [e.originator_id for e in events],
            [e.originator_version for e in events],
            [e.topic for e in events],
            [e.state for e in events],
            _meta_encoder.encode(meta).decode(),
            *claim,
            [i for i, _ in unchanged],
            [v for _, v in unchanged],
        )
        if position is None:
            VERSION_CONFLICTS.inc()
            raise StaleRead("a record this write was decided on has changed since")
        EVENTS_APPENDED.inc(len(events))
        return int(position)

    async def read_aggregate(self, originator_id: UUID) -> list[StoredEvent]:
        return (await self.read_aggregate_at(originator_id))[0]

    async def read_aggregate_at(self, originator_id: UUID) -> tuple[list[StoredEvent], int]:
        """An aggregate's events, and the log position of the last one."""
        try:
            rows = await self.pool.fetch(
                f"SELECT originator_version, topic, state, position FROM {SCHEMA}.events "
                "WHERE originator_id = $1 ORDER BY originator_version",
                originator_id,
            )
        except Exception as e:
            if database_unavailable(e):
                raise Unavailable(str(e)) from e
            raise
        events = [StoredEvent(originator_id, r[0], r[1], r[2]) for r in rows]
        await self.load_keys(e.state for e in events)
        return events, max((r[3] for r in rows), default=0)

    async def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        row = await self.pool.fetchrow(
            f"SELECT request_hash, result, position FROM {SCHEMA}.idempotency_keys "
            "WHERE scope = $1 AND key = $2",
            scope,
            key,
        )
        return IdempotentResult(row[0], row[1], row[2]) if row else None

    async def read_after(
        self,
        after: Checkpoint,
        limit: int = 1000,
        conn: Connection | None = None,
        *,
        metadata: bool = True,
    ) -> list[RecordedEvent]:
        """Committed events after `after`, in (tx, position) order, none skipped.

        `metadata=False`: the events come with empty metadata, not read (for a
        reader that never looks at it, such as a projector).
        """
        source = conn if conn is not None else self.pool
        if not metadata:
            rows = await source.fetch(_READ_AFTER_LEAN, after.tx, after.position, limit)
            await self.load_keys(r[5] for r in rows)
            return [_recorded_lean(r) for r in rows]
        rows = await source.fetch(_READ_AFTER, after.tx, after.position, limit)
        await self.load_keys(r[5] for r in rows)
        return [_recorded(r) for r in rows]

    # -- reading up to a point (replay: what a record held when it was disclosed) --

    async def read_aggregate_until(
        self, originator_id: UUID, until: int | Checkpoint
    ) -> list[RecordedEvent]:
        """One aggregate's events up to a point, in version order.

        A position (an aggregate read's `as_of`: its later versions always sit
        at later positions), or a read model's checkpoint: the events that a
        read model at that checkpoint had applied.
        """
        if isinstance(until, Checkpoint):
            return await self._fetch(_AGGREGATE_UNTIL_TX, originator_id, until.tx, until.position)
        return await self._fetch(_AGGREGATE_UNTIL, originator_id, until)

    async def read_aggregates(self, originator_ids: Sequence[UUID]) -> list[RecordedEvent]:
        """Every event of these aggregates (to fold each to many points), in version order."""
        return await self._fetch(_AGGREGATES, list(originator_ids))

    async def read_until(
        self,
        after: Checkpoint,
        until: Checkpoint,
        limit: int = 1000,
        conn: Connection | None = None,
    ) -> list[RecordedEvent]:
        """Events after `after` up to and including `until`, in (tx, position) order.

        Nothing until every transaction that could still commit below `until`
        has ended: then no page can miss an event a reader at `until` had.
        """
        args = (after.tx, after.position, until.tx, until.position, limit)
        return await self._fetch(_READ_UNTIL, *args, conn=conn)

    async def checkpoint_at(self, position: int) -> Checkpoint | None:
        """The checkpoint of the last event at or before `position` (None: none yet)."""
        row = await self.pool.fetchrow(
            f"SELECT tx, position FROM {SCHEMA}.events WHERE position <= $1 "
            "ORDER BY position DESC LIMIT 1",
            position,
        )
        return Checkpoint(int(row[0]), int(row[1])) if row else None

    async def position_at(self, at: datetime) -> int | None:
        """The position of the last event recorded at or before `at` (None: none)."""
        position = await self.pool.fetchval(
            f"SELECT position FROM {SCHEMA}.events WHERE recorded_at <= $1 "
            "ORDER BY recorded_at DESC, position DESC LIMIT 1",
            at,
        )
        return None if position is None else int(position)

    async def _fetch(
        self, sql: str, *args: object, conn: Connection | None = None
    ) -> list[RecordedEvent]:
        try:
            rows = await (conn if conn is not None else self.pool).fetch(sql, *args)
        except Exception as e:
            if database_unavailable(e):
                raise Unavailable(str(e)) from e
            raise
        await self.load_keys(r[5] for r in rows)
        return [_recorded(r) for r in rows]

    async def head(self) -> Checkpoint:
        """The last committed event in reading order (a reader that reaches it has all)."""
        row = await self.pool.fetchrow(
            f"SELECT tx, position FROM {SCHEMA}.events ORDER BY tx DESC, position DESC LIMIT 1"
        )
        return Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint()

    async def checkpoint_of(self, position: int) -> Checkpoint | None:
        """Where an event sits in reading order, to compare with a reader's checkpoint."""
        tx = await self.pool.fetchval(
            f"SELECT tx FROM {SCHEMA}.events WHERE position = $1", position
        )
        return None if tx is None else Checkpoint(int(tx), position)

    async def last_position(self) -> int:
        return int(
            await self.pool.fetchval(f"SELECT coalesce(max(position), 0) FROM {SCHEMA}.events")
        )
