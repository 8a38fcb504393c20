"""The token and grant indexes in PostgreSQL.

Tokens and grants are aggregates in the log; these tables, updated in the
same transaction as their events, are what each request looks its bearer
token up in (by SHA-256 hash; the secret is never stored) and what the admin
listings read. `carnet.tokens` is part of the write-side schema
(infra/schema.py); `carnet.grants` is made here by `ensure_grant_index`,
which also fills it from the log once (grants given before it existed).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from domain.credentials import Grant, Token
from infra.access_index import ENTRIES
from infra.codec import TypedMapper
from infra.eventstore import HORIZON, EventStore
from infra.pgerrors import database_unavailable
from infra.schema import SCHEMA
from infra.witness import WITNESS
from services.ports import (
    GrantQuery,
    GrantRow,
    Metadata,
    TokenQuery,
    TokenRow,
    TokenView,
    Unavailable,
    VersionConflict,
)


def _topic(cls: type, name: str) -> str:
    # Topics of classes the @event decorator makes (invisible to type checkers).
    return f"{cls.__module__}:{cls.__qualname__}.{name}"


GIVEN, CHANGED, GRANT_REVOKED = (_topic(Grant, n) for n in ("Given", "Changed", "Revoked"))
TOKEN_REVOKED, SUSPENDED = (_topic(Token, n) for n in ("Revoked", "Suspended"))

_UPSERT = f"""
INSERT INTO {SCHEMA}.tokens (token_hash, token_id, actor_kind, actor_id, establishment_id,
    display_name, state, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (token_id) DO UPDATE SET state = $7, expires_at = $8, updated_at = now()
"""

GRANTS = f"{SCHEMA}.grants"
GRANTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {GRANTS} (
    grant_id uuid PRIMARY KEY,
    practitioner_id uuid NOT NULL,
    integration_id uuid NOT NULL,
    scopes text[] NOT NULL,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS grants_practitioner ON {GRANTS} (practitioner_id, position);
CREATE INDEX IF NOT EXISTS grants_integration ON {GRANTS} (integration_id, position);
"""
# Every grant in the log as its last event leaves it (run once, when the table is made).
_BACKFILL = f"""
INSERT INTO {GRANTS} (grant_id, practitioner_id, integration_id, scopes, position)
SELECT g.originator_id, (given.s ->> 'practitioner_id')::uuid,
    (given.s ->> 'integration_id')::uuid,
    CASE WHEN l.topic = $2 THEN '{{}}'::text[]
        ELSE ARRAY(SELECT jsonb_array_elements_text(l.s -> 'scopes')) END,
    g.position
FROM {SCHEMA}.events g,
    LATERAL (SELECT convert_from(g.state, 'UTF8')::jsonb AS s) given,
    LATERAL (
        SELECT e.topic, convert_from(e.state, 'UTF8')::jsonb AS s FROM {SCHEMA}.events e
        WHERE e.originator_id = g.originator_id
        ORDER BY e.originator_version DESC LIMIT 1
    ) l
WHERE g.topic = $1
ON CONFLICT (grant_id) DO NOTHING
"""
_GRANT_UPSERT = f"""
INSERT INTO {GRANTS} (grant_id, practitioner_id, integration_id, scopes, position)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (grant_id) DO UPDATE SET scopes = $4, updated_at = now()
"""
_GRANTS_LOCK = 72810002  # beside infra/schema.py's 72810001


async def ensure_grant_index(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> bool:
    """Make the grant index, and fill it from the log, unless it exists; True if made.

    Idempotent and safe from several processes at once (one makes it, the
    others wait and find it made).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _GRANTS_LOCK)
        if await conn.fetchval("SELECT to_regclass($1)", GRANTS) is not None:
            return False
        await conn.execute(GRANTS_DDL)
        await conn.execute(_BACKFILL, GIVEN, GRANT_REVOKED)
        return True


# Pages follow the log's own order, (tx, position): positions are taken in one
# order and committed in another (DESIGN decision 2), so a cursor on position
# alone would step past a token whose transaction was still open, never to
# list it. A cursor is the position of the last row listed; it stands for
# that event's (tx, position) (for a position no event holds, the last one
# below it). `horizon` says whether a row's transaction is below every one
# still running: only then can nothing commit before it (`_settled`).
_AFTER = f"""(
    coalesce((SELECT c.tx FROM {SCHEMA}.events c WHERE c.position <= $1
        ORDER BY c.position DESC LIMIT 1), '0'::xid8),
    $1::bigint)"""
_TOKENS = f"""
SELECT t.token_id, t.actor_kind, t.actor_id, t.establishment_id, t.display_name, t.state,
    t.expires_at, i.recorded_at, i.position,
    CASE WHEN t.state <> 'active' THEN coalesce((
        SELECT convert_from(r.state, 'UTF8')::jsonb ->> 'reason' FROM {SCHEMA}.events r
        WHERE r.originator_id = t.token_id AND r.topic = ANY($7::text[])
        ORDER BY r.originator_version DESC LIMIT 1), '') ELSE '' END,
    (SELECT max(x.at) FROM {ENTRIES} x WHERE x.token_id = t.token_id::text),
    i.tx < {HORIZON}
FROM {SCHEMA}.tokens t
JOIN {SCHEMA}.events i ON i.originator_id = t.token_id AND i.originator_version = 1
WHERE (i.tx, i.position) > {_AFTER}
    AND (cardinality($2::uuid[]) = 0 OR t.actor_id = ANY($2::uuid[]))
    AND (cardinality($3::text[]) = 0 OR t.actor_kind = ANY($3::text[]))
    AND (cardinality($4::text[]) = 0 OR t.state = ANY($4::text[]))
    AND (cardinality($5::uuid[]) = 0 OR t.establishment_id = ANY($5::uuid[]))
ORDER BY i.tx, i.position
LIMIT $6
"""
_GRANTS = f"""
SELECT g.grant_id, g.practitioner_id, g.integration_id, g.scopes, g.position,
    e.tx < {HORIZON}
FROM {GRANTS} g JOIN {SCHEMA}.events e ON e.position = g.position
WHERE (e.tx, e.position) > {_AFTER} AND cardinality(g.scopes) > 0
    AND (cardinality($2::uuid[]) = 0 OR g.practitioner_id = ANY($2::uuid[]))
    AND (cardinality($3::uuid[]) = 0 OR g.integration_id = ANY($3::uuid[]))
ORDER BY e.tx, e.position
LIMIT $4
"""
# How long a listing waits for the transactions below its rows to end (they
# take milliseconds); past it, it answers with what it has.
SETTLE_TIMEOUT = 1.0


async def _settled(fetch: Callable[[], Awaitable[list[asyncpg.Record]]]) -> list[asyncpg.Record]:
    """A page whose every row's transaction is below all those still running.

    Then no transaction can still commit a row that sorts before the page's
    last one, and the next page, after it, misses nothing. A page with a row
    above that horizon (a transaction begun earlier is still open) is read
    again shortly, as the log's readers wait (infra.eventstore).
    """
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
    pause = 0.002
    while True:
        rows = await fetch()
        if all(r[-1] for r in rows) or asyncio.get_running_loop().time() >= deadline:
            return rows
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def _token_args(token: Token) -> tuple[Any, ...]:
    return (
        bytes.fromhex(token.token_hash),
        token.id,
        token.actor_kind,
        token.actor_id,
        token.establishment_id,
        token.display_name or "",  # None: its holder is erased (infra/keyring.py)
        token.state,
        token.expires_at,
    )


class PostgresTokenStore:
    def __init__(self, store: EventStore, mapper: TypedMapper) -> None:
        self.store = store
        self.mapper = mapper
        self._grants_ready = False
        self._grants_lock = asyncio.Lock()

    async def save(self, token: Token, meta: Metadata) -> int:
        return await self.save_all([token], meta)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """One transaction of events and their index rows; a lost race is a
        conflict, a lost database unavailable; the readers are woken after it."""
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                yield conn
        except asyncpg.UniqueViolationError as e:
            raise VersionConflict(str(e)) from None
        except Exception as e:
            if database_unavailable(e):
                raise Unavailable(str(e)) from e
            raise
        self.store.notifier.poke()

    async def save_all(self, tokens: Sequence[Token], meta: Metadata) -> int:
        stored = await self.mapper.stored_events(tokens)
        witness = WITNESS.get()
        async with self._writing() as conn:
            if witness is None or not stored:
                position = await EventStore.append_on(conn, stored, meta)
            else:  # an audited write: its entry goes in with it (infra/witness.py)
                position = await witness.append_on(conn, stored, tokens, meta)
            await conn.executemany(_UPSERT, [_token_args(t) for t in tokens])
        return position

    async def find(self, token_hash: bytes) -> TokenView | None:
        row = await self.store.pool.fetchrow(
            f"""SELECT token_id, actor_kind, actor_id, establishment_id, display_name, state,
                expires_at FROM {SCHEMA}.tokens WHERE token_hash = $1""",
            token_hash,
        )
        return TokenView(*row) if row else None

    async def tokens(self, query: TokenQuery) -> list[TokenRow]:
        rows = await _settled(
            lambda: self.store.pool.fetch(
                _TOKENS,
                query.after,
                sorted(query.actor_ids),
                sorted(query.actor_kinds),
                sorted(query.states),
                sorted(query.establishment_ids),
                query.limit,
                [TOKEN_REVOKED, SUSPENDED],
            )
        )
        return [
            TokenRow(
                token_id=r[0],
                actor_kind=r[1],
                actor_id=r[2],
                establishment_id=r[3],
                display_name=r[4],
                state=r[5],
                expires_at=r[6],
                created=r[7],
                position=r[8],
                reason=r[9] or "",
                last_used_at=r[10],
            )
            for r in rows
        ]

    async def _ensure_grants(self) -> None:
        # Until the composition root makes the grant index with the schema, the
        # first use in a process does (a no-op once it exists).
        if self._grants_ready:
            return
        async with self._grants_lock:
            if not self._grants_ready:
                async with self.store.pool.acquire() as conn:
                    await ensure_grant_index(conn)
                self._grants_ready = True

    async def save_grant(self, grant: Grant, meta: Metadata) -> int:
        await self._ensure_grants()
        stored = await self.mapper.stored_events([grant])
        witness = WITNESS.get()
        async with self._writing() as conn:
            if witness is None or not stored:
                position = await EventStore.append_on(conn, stored, meta)
            else:
                position = await witness.append_on(conn, stored, [grant], meta)
            await conn.execute(
                _GRANT_UPSERT,
                grant.id,
                grant.practitioner_id,
                grant.integration_id,
                list(grant.scopes),
                position,
            )
        return position

    async def grants(self, query: GrantQuery) -> list[GrantRow]:
        await self._ensure_grants()
        rows = await _settled(
            lambda: self.store.pool.fetch(
                _GRANTS,
                query.after,
                sorted(query.practitioner_ids),
                sorted(query.integration_ids),
                query.limit,
            )
        )
        return [GrantRow(r[0], r[1], r[2], tuple(r[3]), r[4]) for r in rows]
