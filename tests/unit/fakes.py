"""In-memory adapters for the service-layer unit tests."""

import asyncio
import copy
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.credentials import Token
from services.ports import (
    A,
    Idempotency,
    IdempotentResult,
    Metadata,
    TokenView,
    VersionConflict,
)


class FakeRepository:
    """Keeps each aggregate's events; conflicts on versions like the real store."""

    def __init__(self) -> None:
        self.events: dict[UUID, list[Any]] = {}
        self.keys: dict[tuple[str, str], IdempotentResult] = {}
        self.position = 0
        self.saves: list[Metadata] = []

    async def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        await asyncio.sleep(0)  # let concurrent use cases interleave, as on a real server
        aggregate: Any = None
        for event in self.events.get(aggregate_id, []):
            aggregate = copy.deepcopy(event).mutate(aggregate)
        return aggregate if isinstance(aggregate, cls) else None

    async def save(
        self,
        aggregates: Sequence[Aggregate],
        meta: Metadata,
        idempotency: Idempotency | None = None,
    ) -> int:
        pending = [e for a in aggregates for e in a.collect_events()]
        await asyncio.sleep(0)
        versions = {i: len(events) for i, events in self.events.items()}
        for event in pending:
            if versions.get(event.originator_id, 0) != event.originator_version - 1:
                raise VersionConflict(f"{event.originator_id} v{event.originator_version}")
            versions[event.originator_id] = event.originator_version
        if idempotency and (idempotency.scope, idempotency.key) in self.keys:
            raise VersionConflict("idempotency key")
        for event in pending:
            self.events.setdefault(event.originator_id, []).append(event)
            self.position += 1
        if idempotency:
            self.keys[idempotency.scope, idempotency.key] = IdempotentResult(
                idempotency.request_hash, idempotency.result, self.position
            )
        self.saves.append(meta)
        return self.position

    async def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        return self.keys.get((scope, key))


class FakeTokenStore:
    """The token index in memory, saving events through a FakeRepository."""

    def __init__(self, repo: FakeRepository) -> None:
        self.repo = repo
        self.views: dict[bytes, TokenView] = {}

    async def save(self, token: Token, meta: Metadata) -> int:
        position = await self.repo.save([token], meta)
        self.views[bytes.fromhex(token.token_hash)] = TokenView(
            token.id,
            token.actor_kind,
            token.actor_id,
            token.establishment_id,
            token.display_name,
            token.state,
            token.expires_at,
        )
        return position

    async def find(self, token_hash: bytes) -> TokenView | None:
        return self.views.get(token_hash)
