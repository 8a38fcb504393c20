"""The token index in PostgreSQL. Tokens themselves are aggregates in the log;
this table, updated in the same transaction as their events, is what each
request looks its bearer token up in (by SHA-256 hash; the secret is never
stored)."""

from typing import Any

import asyncpg

from domain.credentials import Token
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.schema import SCHEMA
from services.ports import Metadata, TokenView, VersionConflict

_UPSERT = f"""
INSERT INTO {SCHEMA}.tokens (token_hash, token_id, actor_kind, actor_id, establishment_id,
    display_name, state, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (token_id) DO UPDATE SET state = $7, expires_at = $8, updated_at = now()
"""


class PostgresTokenStore:
    def __init__(self, store: EventStore, mapper: TypedMapper) -> None:
        self.store = store
        self.mapper = mapper

    async def save(self, token: Token, meta: Metadata) -> int:
        stored = [self.mapper.to_stored_event(e) for e in token.collect_events()]
        args: tuple[Any, ...] = (
            bytes.fromhex(token.token_hash),
            token.id,
            token.actor_kind,
            token.actor_id,
            token.establishment_id,
            token.display_name,
            token.state,
            token.expires_at,
        )
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                position = await EventStore.append_on(conn, stored, meta)
                await conn.execute(_UPSERT, *args)
        except asyncpg.UniqueViolationError as e:
            raise VersionConflict(str(e)) from None
        return position

    async def find(self, token_hash: bytes) -> TokenView | None:
        row = await self.store.pool.fetchrow(
            f"""SELECT token_id, actor_kind, actor_id, establishment_id, display_name, state,
                expires_at FROM {SCHEMA}.tokens WHERE token_hash = $1""",
            token_hash,
        )
        return TokenView(*row) if row else None
