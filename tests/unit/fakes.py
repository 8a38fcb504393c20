"""In-memory adapters for the service-layer unit tests."""

import asyncio
import copy
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from services.actors import Actor
from services.ports import A, Idempotency, IdempotentResult, Metadata, VersionConflict


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
    def __init__(self) -> None:
        self.tokens: dict[bytes, Actor] = {}

    async def add(self, token_hash: bytes, actor: Actor, label: str) -> None:
        self.tokens[token_hash] = actor

    async def find(self, token_hash: bytes) -> Actor | None:
        return self.tokens.get(token_hash)
