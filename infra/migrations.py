"""The schema's version, and `carnet migrate`: apply the pending numbered steps.

The version of a database is the highest step recorded in
`carnet.schema_migrations`; a database without that table is at version 0
(empty, or written before the schema had versions: step 1 is then a no-op).
This Carnet expects `LATEST`. `open_pool` migrates by itself for the demo
and the tests; `carnet serve` and the other commands given a database URL
only check, and refuse a schema that is older (run `carnet migrate`) or
newer (upgrade Carnet) than this code.

Several processes may migrate at once: each step runs in a transaction that
first takes an advisory lock and re-reads the version, so a step is applied
and recorded once. A data step (one that writes events) runs before that
transaction, outside the lock: it is safe to run twice at once by design
(see infra/backfill.py), and only one process records it.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from domain.personal import PERSONAL, personal_fields, subject_of_event
from infra.backfill import run_once
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.keyring import KeyError_, is_envelope, keyring_of, subjects_in
from infra.projector import Projector
from infra.repository import PostgresRepository
from infra.schema import BOOKKEEPING, LATEST, SCHEMA, STEPS, VERSIONS
from infra.tokens import ensure_grant_index
from projections import AccessIndexProjection, AccessLogProjection

# The same key as the unversioned schema took, so an older Carnet starting
# beside this one waits for it too.
SCHEMA_LOCK = 72810001


@dataclass(frozen=True)
class Step:
    version: int
    name: str


class SchemaMismatch(Exception):
    """The database's schema is not the version this Carnet expects."""

    def __init__(self, found: int, expected: int = LATEST) -> None:
        self.found = found
        self.expected = expected
        if found > expected:
            message = (
                f"schema version {found} is newer than this Carnet ({expected}): upgrade Carnet"
            )
        else:
            message = (
                f"schema at version {found}, this Carnet needs {expected}: run `carnet migrate`"
            )
        super().__init__(message)


async def _backfill(pool: asyncpg.Pool) -> None:
    await run_once(pool, PostgresRepository(EventStore(pool)))


async def _grant_index(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await ensure_grant_index(conn)


_REKEYED = "access models keyed by log position"


async def _rekey_access_models(pool: asyncpg.Pool) -> None:
    """Rebuild the access index and access log: their sequence is now a log position.

    A rebuild fills shadow tables and swaps them in; on an empty log it is
    cheap. Both read models answer from the old keys until it is done. Two
    processes migrating at once take turns on a lock; the second finds it done.
    """
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1, 7)", SCHEMA_LOCK)
        try:
            done = f"SELECT 1 FROM {SCHEMA}.migrations WHERE name = $1"
            if await conn.fetchval(done, _REKEYED):
                return
            for projection in (AccessIndexProjection(), AccessLogProjection()):
                await Projector(pool, projection).rebuild()
            await conn.execute(
                f"INSERT INTO {SCHEMA}.migrations (name) VALUES ($1) ON CONFLICT DO NOTHING",
                _REKEYED,
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, 7)", SCHEMA_LOCK)


def is_plain(value: object) -> bool:
    """A personal field's value as an earlier Carnet stored it: in clear."""
    return value is not None and not is_envelope(value)


_SEAL_PAGE = 500
_SEALABLE = f"""SELECT position, originator_id, originator_version, topic, state
FROM {SCHEMA}.events WHERE topic = ANY($1::text[]) AND position > $2
ORDER BY position LIMIT $3"""
_PATIENT_OF = f"""SELECT convert_from(state, 'UTF8')::jsonb ->> 'patient_id' FROM {SCHEMA}.events
WHERE originator_id = $1 AND originator_version = 1"""


async def _seal_earlier_events(pool: asyncpg.Pool) -> None:
    """Seal the personal fields of events written before crypto-shredding (step 8).

    The one rewrite of the log Carnet ever makes: an event's state is replaced
    by the same event with its personal fields sealed, so that erasing a person
    leaves nothing of theirs readable in it. Its position, transaction and
    meaning stay; the access ledger's chain does not cover events. An event
    already sealed is left as it is, so two processes may run this at once.
    """
    ring = keyring_of(pool)
    if ring is None:
        raise KeyError_(
            "schema step 9 seals the personal data of earlier events: "
            "it needs the key-encryption key (CARNET_KEK or kek_file)"
        )
    await ring.check()  # records this KEK's canary before any key is wrapped by it
    mapper = TypedMapper(ring)
    topics = [get_topic(cls) for cls in PERSONAL]
    after = 0
    while rows := await pool.fetch(_SEALABLE, topics, after, _SEAL_PAGE):
        after = rows[-1][0]
        await ring.load(subjects_in(r[4] for r in rows))
        rewrites: list[tuple[int, bytes, Any, UUID]] = []
        for position, originator_id, version, topic, state in rows:
            raw = msgspec.json.decode(state)
            names = personal_fields(resolve_topic(topic))
            if not any(is_plain(raw.get(n)) for n in names):
                continue  # sealed already (or nothing personal in it)
            event = mapper.to_domain_event(StoredEvent(originator_id, version, topic, state))
            subject = subject_of_event(event)
            if subject is None:  # an appointment's: its patient's
                patient = await pool.fetchval(_PATIENT_OF, originator_id)
                subject = UUID(patient) if patient else None
            if subject is not None:
                rewrites.append((position, bytes(state), event, subject))
        if not rewrites:
            continue
        await ring.ensure({r[3] for r in rewrites})
        async with pool.acquire() as conn, conn.transaction():
            for position, old, event, subject in rewrites:
                await conn.execute(
                    f"UPDATE {SCHEMA}.events SET state = $2 WHERE position = $1 AND state = $3",
                    position,
                    mapper.to_stored_event(event, subject).state,
                    old,
                )


DATA: dict[int, Callable[[asyncpg.Pool], Awaitable[None]]] = {
    2: _backfill,
    4: _grant_index,
    7: _rekey_access_models,
    9: _seal_earlier_events,
}


async def schema_version(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool,
) -> int:
    """The database's schema version; 0 for an empty (or unversioned) one."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", VERSIONS)
    if not exists:
        return 0
    return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {VERSIONS}"))


async def log_ahead_of_server(pool: asyncpg.Pool) -> str | None:
    """Why the log cannot be read on this server, if its transaction ids are ahead of it.

    Every event keeps the id of the transaction that wrote it (`tx`), and
    readers take only events below the server's oldest running transaction.
    A pg_dump restored into another PostgreSQL cluster keeps those ids, but
    not the cluster's transaction counter: until the new cluster's ids pass
    them, the restored events stay invisible and new ones sort before them.
    """
    row = await pool.fetchrow(
        f"""SELECT max(tx)::text AS log, pg_snapshot_xmax(pg_current_snapshot())::text AS server
        FROM {SCHEMA}.events"""
    )
    if row is None or row["log"] is None or int(row["log"]) < int(row["server"]):
        return None
    epoch = (int(row["log"]) >> 32) + 1
    return (
        f"the log's newest transaction id ({row['log']}) is ahead of this server's "
        f"({row['server']}): it was restored into another PostgreSQL cluster. Stop that "
        f"cluster, run `pg_resetwal -e {epoch} -D <its data directory>`, start it "
        "(docs/operations.md, Backup and restore)"
    )


async def check_schema(pool: asyncpg.Pool) -> None:
    """Raise SchemaMismatch unless the schema is exactly at this Carnet's version."""
    found = await schema_version(pool)
    if found != LATEST:
        raise SchemaMismatch(found)


async def migrate(pool: asyncpg.Pool) -> list[Step]:
    """Apply every pending step, in order; return those this call applied.

    Raises SchemaMismatch, changing nothing, if the schema is newer than this Carnet.
    """
    found = await schema_version(pool)
    if found > LATEST:
        raise SchemaMismatch(found)
    if found == LATEST:
        return []  # the common case: one query
    applied: list[Step] = []
    for version, name, sql in STEPS:
        if version <= found:
            continue
        if version in DATA:
            await DATA[version](pool)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(BOOKKEEPING)
            current = await schema_version(conn)
            if current > LATEST:
                raise SchemaMismatch(current)
            if current >= version:
                continue  # another process applied it meanwhile
            if sql is not None:
                await conn.execute(sql)
            await conn.execute(
                f"INSERT INTO {VERSIONS} (version, name) VALUES ($1, $2)", version, name
            )
        applied.append(Step(version, name))
    return applied
