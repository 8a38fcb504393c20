"""One read model rebuilt as it stood at a past point, in a scratch schema of its own.

The projection's own DDL and statements fill tables named by their logical
names in a fresh schema `carnet_replay_<hex>`, from the log up to a
checkpoint, in the order the live projector applies it (Projector._apply,
which also makes client text storable). Pages commit one by one, as in
`Projector.rebuild`: a single transaction would hold an xid all along and so
hold back every reader of the log (see infra/projector.py).

Nothing is written to `carnet_read.projections`: a scratch model never shows
up in `carnet projections status`, and no crash can leave a checkpoint row.
While it lives, the run holds a session advisory lock named after the
schema; a schema whose lock nobody holds was left by a run that died, and
the next run (`sweep`) drops it.
"""

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from uuid import uuid4

import asyncpg

from infra.deadlines import bounded
from infra.decoder import LeanMapper, pages
from infra.eventstore import Checkpoint, Connection, EventStore
from infra.projector import Projector
from projections import Projection

PREFIX = "carnet_replay_"
SCRATCH_LOCK = 72810020  # pg_advisory_lock(SCRATCH_LOCK, hashtext(schema)) while it lives
_LOCK = "SELECT pg_advisory_lock($1, hashtext($2))"
_TRY = "SELECT pg_try_advisory_lock($1, hashtext($2))"
_UNLOCK = "SELECT pg_advisory_unlock($1, hashtext($2))"
STATEMENT_SECONDS = 120.0  # one page, one DDL statement, one count


@dataclass
class Scratch:
    """A read model as of `until`, in `schema`; `counts`: rows per logical table."""

    projection: Projection
    schema: str
    until: Checkpoint
    applied: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def table(self, logical: str) -> str:
        return f"{self.schema}.{logical}"

    @property
    def tables(self) -> dict[str, str]:
        return {t: self.table(t) for t in self.projection.tables}


async def sweep(conn: Connection) -> list[str]:
    """Drop the scratch schemas of runs that died; return their names."""
    names = [
        r[0]
        for r in await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", PREFIX
        )
    ]
    dropped = []
    for name in names:
        if await conn.fetchval(_TRY, SCRATCH_LOCK, name):
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                dropped.append(name)
            finally:
                await conn.execute(_UNLOCK, SCRATCH_LOCK, name)
    return dropped


@contextlib.asynccontextmanager
async def scratch_model(
    pool: asyncpg.Pool,
    projection: Projection,
    until: Checkpoint,
    progress: Callable[[int], None] | None = None,
) -> AsyncIterator[Scratch]:
    """The read model filled up to `until` in a new schema, dropped on the way out."""
    scratch = Scratch(projection, f"{PREFIX}{uuid4().hex[:12]}", until)
    async with pool.acquire() as holder:
        await bounded(sweep(holder), STATEMENT_SECONDS)
        await bounded(holder.execute(_LOCK, SCRATCH_LOCK, scratch.schema), STATEMENT_SECONDS)
        try:
            await _fill(pool, scratch, progress)
            yield scratch
        finally:
            try:
                drop = f"DROP SCHEMA IF EXISTS {scratch.schema} CASCADE"
                await bounded(holder.execute(drop), STATEMENT_SECONDS)
            finally:
                await bounded(holder.execute(_UNLOCK, SCRATCH_LOCK, scratch.schema), 10.0)


async def _fill(
    pool: asyncpg.Pool, scratch: Scratch, progress: Callable[[int], None] | None
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await bounded(conn.execute(f"CREATE SCHEMA {scratch.schema}"), STATEMENT_SECONDS)
        for statement in scratch.projection.ddl(scratch.tables):
            await bounded(conn.execute(statement), STATEMENT_SECONDS)
    projector = Projector(pool, scratch.projection, LeanMapper())
    async for page in pages(EventStore(pool), scratch.until, deadline=STATEMENT_SECONDS):
        async with pool.acquire() as conn, conn.transaction():
            # The live projector's own application of a batch, into the scratch tables.
            await bounded(projector._apply(conn, page, scratch.tables), STATEMENT_SECONDS)
        scratch.applied += len(page)
        if progress is not None:
            progress(scratch.applied)
    for logical, table in scratch.tables.items():
        count = await bounded(pool.fetchval(f"SELECT count(*) FROM {table}"), STATEMENT_SECONDS)
        scratch.counts[logical] = int(count)


async def rows(pool: asyncpg.Pool, scratch: Scratch, logical: str) -> AsyncIterator[str]:
    """The rows of one table as JSON objects (PostgreSQL's to_jsonb, times in UTC)."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL TIME ZONE 'UTC'")
        query = f"SELECT to_jsonb(t)::text FROM {scratch.table(logical)} t ORDER BY 1"
        async for row in conn.cursor(query, prefetch=1000):
            yield row[0]
