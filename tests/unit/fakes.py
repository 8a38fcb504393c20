"""In-memory adapters for the service-layer unit tests."""

import asyncio
import copy
import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.credentials import Grant, Token
from services.ports import (
    A,
    GrantQuery,
    GrantRow,
    Idempotency,
    IdempotentResult,
    Metadata,
    StaleRead,
    TokenQuery,
    TokenRow,
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
        self.positions: dict[tuple[UUID, int], int] = {}  # (aggregate, version) -> position
        self.reads = 0  # get/get_many calls: the round trips a real store would make
        self.lookups = 0  # idempotent_result calls

    async def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        return (await self.get_many([(cls, aggregate_id)]))[0]

    async def get_many(
        self, wanted: Sequence[tuple[type[A], UUID]], *, remembered: bool = False
    ) -> list[A | None]:
        self.reads += 1  # one round trip, however many aggregates
        await asyncio.sleep(0)  # let concurrent use cases interleave, as on a real server
        return [self._replay(cls, aggregate_id) for cls, aggregate_id in wanted]

    async def history(self, aggregate_id: UUID) -> list[Any]:
        return [copy.deepcopy(e) for e in self.events.get(aggregate_id, [])]

    def _replay(self, cls: type[A], aggregate_id: UUID) -> A | None:
        aggregate: Any = None
        for event in self.events.get(aggregate_id, []):
            aggregate = copy.deepcopy(event).mutate(aggregate)
        return aggregate if isinstance(aggregate, cls) else None

    async def save(
        self,
        aggregates: Sequence[Aggregate],
        meta: Metadata,
        idempotency: Idempotency | None = None,
        *,
        relied_on: Sequence[Aggregate | None] = (),
    ) -> int:
        pending = [e for a in aggregates for e in a.collect_events()]
        await asyncio.sleep(0)
        versions = {i: len(events) for i, events in self.events.items()}
        changed = {e.originator_id for e in pending}
        for read in relied_on:
            if read is None or read.id in changed:
                continue
            if versions.get(read.id, 0) != read.version:
                raise StaleRead(f"{read.id} is no longer at v{read.version}")
        for event in pending:
            if versions.get(event.originator_id, 0) != event.originator_version - 1:
                raise VersionConflict(f"{event.originator_id} v{event.originator_version}")
            versions[event.originator_id] = event.originator_version
        if idempotency and (idempotency.scope, idempotency.key) in self.keys:
            raise VersionConflict("idempotency key")
        for event in pending:
            self.events.setdefault(event.originator_id, []).append(event)
            self.position += 1
            self.positions[event.originator_id, event.originator_version] = self.position
        if idempotency:
            self.keys[idempotency.scope, idempotency.key] = IdempotentResult(
                idempotency.request_hash, idempotency.result, self.position
            )
        self.saves.append(meta)
        return self.position

    async def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        self.lookups += 1
        return self.keys.get((scope, key))


class FakeTokenStore:
    """The token and grant indexes in memory, saving events through a FakeRepository."""

    def __init__(self, repo: FakeRepository) -> None:
        self.repo = repo
        self.views: dict[bytes, TokenView] = {}
        self.rows: dict[UUID, TokenRow] = {}
        self.grant_rows: dict[UUID, GrantRow] = {}
        self.last_used: dict[UUID, datetime] = {}  # what the access index would say

    async def save(self, token: Token, meta: Metadata) -> int:
        return await self.save_all([token], meta)

    async def save_all(self, tokens: Sequence[Token], meta: Metadata) -> int:
        position = await self.repo.save(tokens, meta)
        for token in tokens:
            self.views[bytes.fromhex(token.token_hash)] = TokenView(
                token.id,
                token.actor_kind,
                token.actor_id,
                token.establishment_id,
                token.display_name,
                token.state,
                token.expires_at,
            )
            first = self.rows.get(token.id)
            self.rows[token.id] = TokenRow(
                token_id=token.id,
                actor_kind=token.actor_kind,
                actor_id=token.actor_id,
                establishment_id=token.establishment_id,
                display_name=token.display_name,
                state=token.state,
                expires_at=token.expires_at,
                created=first.created if first else token.created_on,
                position=self.repo.positions[token.id, 1],
                reason=token.reason,
            )
        return position

    async def find(self, token_hash: bytes) -> TokenView | None:
        return self.views.get(token_hash)

    async def tokens(self, query: TokenQuery) -> list[TokenRow]:
        found = [
            dataclasses.replace(row, last_used_at=self.last_used.get(row.token_id))
            for row in sorted(self.rows.values(), key=lambda r: r.position)
            if row.position > query.after
            and (not query.actor_ids or row.actor_id in query.actor_ids)
            and (not query.actor_kinds or row.actor_kind in query.actor_kinds)
            and (not query.states or row.state in query.states)
            and (not query.establishment_ids or row.establishment_id in query.establishment_ids)
        ]
        return found[: query.limit]

    async def save_grant(self, grant: Grant, meta: Metadata) -> int:
        position = await self.repo.save([grant], meta)
        self.grant_rows[grant.id] = GrantRow(
            grant.id,
            grant.practitioner_id,
            grant.integration_id,
            tuple(grant.scopes),
            self.repo.positions[grant.id, 1],
        )
        return position

    async def grants(self, query: GrantQuery) -> list[GrantRow]:
        found = [
            row
            for row in sorted(self.grant_rows.values(), key=lambda r: r.position)
            if row.position > query.after
            and row.scopes
            and (not query.practitioner_ids or row.practitioner_id in query.practitioner_ids)
            and (not query.integration_ids or row.integration_id in query.integration_ids)
        ]
        return found[: query.limit]
