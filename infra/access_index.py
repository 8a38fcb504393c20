"""Searching the access ledger: the access index finds entries, the log gives them.

A `LedgerQuery` becomes one SELECT over the index (projections/access_index.py)
that yields matching sequences; those entries are then read from the log
itself (a sequence is the entry event's log position, in whichever shard)
and decoded, so what is returned is exactly what the chains hold.

The index is a read model: it lags the log by the milliseconds its
projector takes. `caught_up` waits until it holds everything committed
before the call; `catch_up_index` applies what is missing itself (for a
command line tool, which cannot count on a server's workers). Statements
are bounded by the pool's command timeout (infra/bootstrap.py).

Each search plans with its own values (`plan_cache_mode = force_custom_plan`):
a generic plan cannot tell a token with ten entries from one with millions,
and the right index differs.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from domain.ledger import AccessRecord, shard_number
from infra.codec import TypedMapper
from infra.eventstore import Checkpoint, Connection, EventStore
from infra.keyring import keyring_of, opened, subjects_in
from infra.ledger import UnreadableEntry, decode
from infra.projector import CHECKPOINTS, ProjectionFailed, Projector
from infra.schema import SCHEMA
from projections import READ_SCHEMA
from projections.access_index import KEY_LIMIT, AccessIndexProjection
from projections.base import storable
from services.ports import LedgerQuery

INDEX = AccessIndexProjection.name
ENTRIES = f"{READ_SCHEMA}.{INDEX}_entries"
ITEMS = f"{READ_SCHEMA}.{INDEX}_items"
# LedgerQuery set -> the entries column it selects on (keys cut as the index cuts them).
_WHO = {
    "actor_ids": "actor_id",
    "token_ids": "token_id",
    "integration_ids": "integration_id",
    "client_ips": "client_ip",
    "user_agents": "user_agent",
}
_WHAT = {"outcomes": "outcome", "actions": "action", "resource_types": "resource_type"}
_ITEMS = {
    "patient_ids": "patient_id",
    "record_ids": "record_id",
    "practitioner_ids": "practitioner_id",
    "establishment_ids": "establishment_id",
}
_NULLABLE = frozenset({"token_id", "integration_id"})
_LOAD = f"""
SELECT position, originator_id, originator_version, topic, state FROM {SCHEMA}.events
WHERE position = ANY($1::bigint[])
ORDER BY position
"""


class IndexBehind(Exception):
    """The access index has not reached the log's head in time (or is stopped)."""


def _values(values: frozenset[str], cut: bool = True) -> list[str]:
    """Query values as the index stores them: storable text, keys cut to length."""
    return sorted({storable(v[:KEY_LIMIT] if cut else v) for v in values})


def where(query: LedgerQuery) -> tuple[str, list[Any]]:
    """The conditions on `e` (entries) for the query, and their arguments."""
    conditions: list[str] = []
    args: list[Any] = []

    def arg(value: Any, cast: str = "text[]") -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    for name, column in _WHO.items():
        if wanted := getattr(query, name):
            conditions.append(f"e.{column} = ANY({arg(_values(wanted))})")
        if unwanted := getattr(query, f"not_{name}"):
            # An entry without a token is not "that token": a negation keeps it.
            test = f"e.{column} <> ALL({arg(_values(unwanted))})"
            nullable = column in _NULLABLE
            conditions.append(f"(e.{column} IS NULL OR {test})" if nullable else test)
    for name, column in _WHAT.items():
        if wanted := getattr(query, name):
            conditions.append(f"e.{column} = ANY({arg(_values(wanted, cut=False))})")
    for name, column in _ITEMS.items():
        if wanted := getattr(query, name):
            conditions.append(
                f"EXISTS (SELECT 1 FROM {ITEMS} i WHERE i.sequence = e.sequence "
                f"AND i.{column} = ANY({arg(_values(wanted))}))"
            )
    if query.since is not None:
        conditions.append(f"e.at >= {arg(query.since, 'timestamptz')}")
    if query.until is not None:
        conditions.append(f"e.at < {arg(query.until, 'timestamptz')}")
    if query.after:
        conditions.append(f"e.sequence > {arg(query.after, 'bigint')}")
    return " AND ".join(conditions) or "true", args


def search(query: LedgerQuery, limited: bool = True) -> tuple[str, list[Any]]:
    """SELECT the matching sequences, in order (at most `query.limit` if `limited`)."""
    conditions, args = where(query)
    sql = f"SELECT e.sequence FROM {ENTRIES} e WHERE {conditions} ORDER BY e.sequence"
    if limited:
        args.append(query.limit)
        sql += f" LIMIT ${len(args)}"
    return sql, args


async def load(
    conn: Connection, sequences: Sequence[int], mapper: TypedMapper | None = None
) -> list[tuple[int, AccessRecord]]:
    """These entries from the log, in sequence order; UnreadableEntry if one is altered.

    An entry the index names but the log no longer holds is left out: the log
    decides, and `carnet verify` says what became of it. A position that holds
    something other than an access entry of a shard is an altered entry.
    """
    if not sequences:
        return []
    mapper = mapper or TypedMapper()
    rows = await conn.fetch(_LOAD, list(sequences))
    if mapper.keyring is not None:  # their client addresses and user agents, opened
        await mapper.keyring.load(subjects_in(r[4] for r in rows))
    found = []
    for r in rows:
        shard = shard_number(r[1])
        if shard is None:
            raise UnreadableEntry(r[2], f"position {r[0]} is not in an access-ledger shard")
        sequence = int(r[0])
        record = decode(mapper, r[2], r[3], r[4], r[1]).record
        found.append((sequence, opened(record).reflecting(sequence)))
    return found


async def find(
    conn: Connection, query: LedgerQuery, mapper: TypedMapper | None = None
) -> list[tuple[int, AccessRecord]]:
    """One page of matching entries; `conn` must be in a transaction."""
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    sql, args = search(query)
    return await load(conn, [r[0] for r in await conn.fetch(sql, *args)], mapper)


def _by_token_only(query: LedgerQuery) -> bool:
    """Whether the query is "these tokens (over a window)", and nothing else."""
    others = replace(query, token_ids=frozenset(), since=None, until=None, after=0, limit=0)
    return bool(query.token_ids) and others == LedgerQuery(limit=0)


async def records(pool: asyncpg.Pool, query: LedgerQuery) -> list[tuple[str, bool]]:
    """The records the matching entries name, each with whether any of them disclosed it.

    From the index alone, in no particular order (`after` and `limit` are
    ignored): the record list of a scope, in milliseconds, before any entry is
    read. "These tokens over a window" reads one range of the items' token
    index. The list travels as two arrays: decoding rows one by one would cost
    more than finding them.
    """
    listed = "SELECT array_agg(record_id), array_agg(disclosed) FROM ({}) g"
    if _by_token_only(query):
        # One index serves it whatever the values: no transaction, no custom plan needed.
        args: list[Any] = [_values(query.token_ids)]
        window = ""
        for bound, test in ((query.since, ">="), (query.until, "<")):
            if bound is not None:
                args.append(bound)
                window += f" AND i.at {test} ${len(args)}::timestamptz"
        sql = f"""SELECT i.record_id, bool_or(i.disclosed) AS disclosed FROM {ITEMS} i
            WHERE i.token_id = ANY($1::text[]) AND i.record_id IS NOT NULL{window}
            GROUP BY i.record_id"""
        found = await pool.fetchrow(listed.format(sql), *args)
    else:
        conditions, args = where(replace(query, after=0))
        sql = f"""SELECT i.record_id, bool_or(i.disclosed) AS disclosed FROM {ENTRIES} e
            JOIN {ITEMS} i ON i.sequence = e.sequence
            WHERE {conditions} AND i.record_id IS NOT NULL
            GROUP BY i.record_id"""
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            found = await conn.fetchrow(listed.format(sql), *args)
    if found is None or found[0] is None:
        return []
    return list(zip(found[0], found[1], strict=True))


async def iter_ledger(
    source: Any, query: LedgerQuery, page: int = 1000
) -> AsyncGenerator[tuple[int, AccessRecord], None]:
    """Every matching entry (sequence, record) in sequence order, `page` at a time.

    `source` is an asyncpg pool or anything with a `pool` (PostgresReadModels).
    `query.after` is honoured, `query.limit` is not: this streams them all, from
    one snapshot of index and log, with one sort however many pages there are.
    It holds a connection until exhausted or closed (`contextlib.aclosing`).
    The index lags the log: call `caught_up` or `catch_up_index` first.
    """
    pool: asyncpg.Pool = getattr(source, "pool", source)
    mapper = TypedMapper(keyring_of(pool))
    sql, args = search(query, limited=False)
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        cursor = await conn.cursor(sql, *args)
        while chunk := await cursor.fetch(page):
            for found in await load(conn, [r[0] for r in chunk], mapper):
                yield found


async def _index_checkpoint(pool: asyncpg.Pool) -> tuple[Checkpoint, str, str | None]:
    row = await pool.fetchrow(
        f"SELECT tx, position, state, error FROM {CHECKPOINTS} WHERE name = $1", INDEX
    )
    if row is None:
        return Checkpoint(), "missing", None
    return Checkpoint(int(row[0]), int(row[1])), row[2], row[3]


async def caught_up(pool: asyncpg.Pool, within: float = 5.0) -> None:
    """Return once the index holds every event committed before the call; else IndexBehind."""
    head = await EventStore(pool).head()
    deadline = time.monotonic() + within
    delay = 0.002
    while True:
        reached, state, error = await _index_checkpoint(pool)
        if reached >= head:
            return
        if state == "stopped" or time.monotonic() > deadline:
            raise IndexBehind(_behind(reached, head, state, error))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def catch_up_index(pool: asyncpg.Pool, within: float = 60.0) -> int:
    """Apply what the index lacks, here and now (beside any running worker); return how many.

    IndexBehind if the index is stopped on an error (`carnet projections
    resume access_index` once its cause is fixed) or `within` passes first.
    """
    projector = Projector(pool, AccessIndexProjection())
    await projector.ensure()
    reached, state, error = await _index_checkpoint(pool)
    if state != "running":
        raise IndexBehind(_behind(reached, await EventStore(pool).head(), state, error))
    try:
        return await projector.catch_up(within)
    except (TimeoutError, ProjectionFailed) as e:
        reached, state, error = await _index_checkpoint(pool)
        raise IndexBehind(_behind(reached, await EventStore(pool).head(), state, error)) from e


def _behind(reached: Checkpoint, head: Checkpoint, state: str, error: str | None) -> str:
    if state == "stopped":
        return f"the access index is stopped at position {reached.position}: {error}"
    return (
        f"the access index is at position {reached.position}, "
        f"behind the log's head at {head.position}"
    )
