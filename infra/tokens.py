"""Bearer tokens in PostgreSQL, stored only as SHA-256 hashes."""

from uuid import UUID

import asyncpg

from infra.schema import SCHEMA
from services.actors import Actor, ActorKind


class PostgresTokenStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, token_hash: bytes, actor: Actor, label: str) -> None:
        await self.pool.execute(
            f"INSERT INTO {SCHEMA}.tokens (token_hash, token_id, actor_kind, actor_id, "
            "establishment_id, label) VALUES ($1, $2, $3, $4, $5, $6)",
            token_hash,
            actor.token_id,
            actor.kind.value,
            actor.id,
            actor.establishment_id,
            label,
        )

    async def find(self, token_hash: bytes) -> Actor | None:
        row = await self.pool.fetchrow(
            f"SELECT token_id, actor_kind, actor_id, establishment_id FROM {SCHEMA}.tokens "
            "WHERE token_hash = $1 AND revoked_at IS NULL",
            token_hash,
        )
        if row is None:
            return None
        token_id: UUID = row[0]
        return Actor(ActorKind(row[1]), row[2], row[3], token_id)
