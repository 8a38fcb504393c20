"""The Repository port on the Postgres event store: aggregates in, events out."""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from infra.codec import TypedMapper
from infra.eventstore import EventStore
from services.ports import A, Idempotency, IdempotentResult, Metadata

POSITION = "_carnet_log_position"


def log_position(aggregate: Aggregate) -> int:
    """The log position of the last event the aggregate was loaded from (0 if new)."""
    return int(aggregate.__dict__.get(POSITION, 0))


class PostgresRepository:
    def __init__(self, store: EventStore, mapper: TypedMapper | None = None) -> None:
        self.store = store
        self.mapper = mapper or TypedMapper()

    async def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        stored, position = await self.store.read_aggregate_at(aggregate_id)
        aggregate: Any = None
        for s in stored:
            aggregate = self.mapper.to_domain_event(s).mutate(aggregate)
        if aggregate is not None and not isinstance(aggregate, cls):
            # An id of another kind of aggregate is, to the caller, no such thing.
            return None
        if aggregate is not None:
            # What the aggregate reflects, for the access ledger's "as of".
            aggregate.__dict__[POSITION] = position
        return aggregate

    async def save(
        self,
        aggregates: Sequence[Aggregate],
        meta: Metadata,
        idempotency: Idempotency | None = None,
    ) -> int:
        pending = [e for a in aggregates for e in a.collect_events()]
        stored = [self.mapper.to_stored_event(e) for e in pending]
        return await self.store.append(stored, meta, idempotency)

    async def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        return await self.store.idempotent_result(scope, key)
