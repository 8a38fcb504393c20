"""The Repository port on the Postgres event store: aggregates in, events out."""

from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate

from infra.aggregate_cache import DEFAULT_CAPACITY, AggregateCache, Loaded
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.witness import WITNESS
from services.ports import A, Idempotency, IdempotentResult, Metadata, VersionConflict

POSITION = "_carnet_log_position"


def log_position(aggregate: Aggregate) -> int:
    """The log position of the last event the aggregate was loaded from (0 if new)."""
    return int(aggregate.__dict__.get(POSITION, 0))


def _build(cls: type[A], loaded: Loaded | None) -> A | None:
    """A new aggregate from the events (never one another caller holds)."""
    if loaded is None:
        return None
    aggregate: Any = None
    for e in loaded.events:
        aggregate = e.mutate(aggregate)
    if not isinstance(aggregate, cls):
        # An id of another kind of aggregate is, to the caller, no such thing.
        return None
    # What the aggregate reflects, for the access ledger's "as of".
    aggregate.__dict__[POSITION] = loaded.position
    return aggregate


class PostgresRepository:
    def __init__(
        self,
        store: EventStore,
        mapper: TypedMapper | None = None,
        cache_capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.store = store
        # Sealing personal fields when the pool has a keyring (infra/keyring.py).
        self.mapper = mapper or TypedMapper(store.keyring)
        # Per process; every read catches it up first (infra/aggregate_cache.py).
        self.cache = AggregateCache(self.mapper, cache_capacity)

    async def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        return (await self.get_many([(cls, aggregate_id)]))[0]

    async def get_many(
        self, wanted: Sequence[tuple[type[A], UUID]], *, remembered: bool = False
    ) -> list[A | None]:
        """Several aggregates in one round trip, each as fresh as a full replay.

        `remembered`: from the cache alone when it holds them all (no round
        trip), for a write whose save checks them (`relied_on`)."""
        ids = [i for _, i in wanted]
        loaded = self.cache.remembered(ids) if remembered else None
        if loaded is None:
            loaded = await self.cache.load(self.store.pool, ids)
        return [_build(cls, loaded.get(i)) for cls, i in wanted]

    async def history(self, aggregate_id: UUID) -> list[Any]:
        stored = await self.store.read_aggregate(aggregate_id)  # its keys loaded too
        return [self.mapper.to_domain_event(e) for e in stored]

    async def save(
        self,
        aggregates: Sequence[Aggregate],
        meta: Metadata,
        idempotency: Idempotency | None = None,
        *,
        relied_on: Sequence[Aggregate | None] = (),
    ) -> int:
        stored = await self.mapper.stored_events(aggregates)
        changed: set[UUID] = {cast(UUID, e.originator_id) for e in stored}
        # What the write was decided on, at the version it was read at: the
        # append inserts nothing if any has moved on since (StaleRead).
        unchanged = [(a.id, a.version) for a in relied_on if a is not None and a.id not in changed]
        witness = WITNESS.get()
        try:
            if witness is None or not stored:
                position = await self.store.append(stored, meta, idempotency, unchanged)
            else:  # an audited write: its entry goes in with it (infra/witness.py)
                position = await witness.append(stored, aggregates, meta, idempotency, unchanged)
        except VersionConflict:
            # Whatever is cached of them is behind the log: the retry reads it.
            self.cache.forget([*changed, *(i for i, _ in unchanged)])
            raise
        self.cache.saved(stored)  # aggregate cache (S2): the next get fetches nothing new
        return position

    async def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        return await self.store.idempotent_result(scope, key)
