"""Ports the use cases depend on. Adapters live in infra/; fakes in tests."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from services.actors import Actor

A = TypeVar("A", bound=Aggregate)


class VersionConflict(Exception):
    """Another writer appended to one of the aggregates first."""


class Unavailable(Exception):
    """The event store cannot be reached right now."""


@dataclass(frozen=True)
class Metadata:
    """Who caused an append, and in answer to which request."""

    actor_kind: str
    actor_id: str
    request_id: str = ""
    correlation_id: str = ""
    token_id: str = ""


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key claim, saved in the same transaction as the events.

    `result` is what the first request produced (e.g. the appointment id);
    a repeat with the same key and the same request returns it unchanged.
    """

    scope: str
    key: str
    request_hash: str
    result: str = ""


@dataclass(frozen=True)
class IdempotentResult:
    request_hash: str
    result: str
    position: int


class Repository(Protocol):
    async def get(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """The aggregate as of its latest event, or None if it has none."""

    async def save(
        self,
        aggregates: Sequence[Aggregate],
        meta: Metadata,
        idempotency: Idempotency | None = None,
    ) -> int:
        """Append all pending events atomically; return the last position."""

    async def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        """The stored answer to an earlier request with this key, if any."""


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""


class TokenStore(Protocol):
    async def add(self, token_hash: bytes, actor: Actor, label: str) -> None:
        """Keep a token's hash, bound to its actor. The secret is never stored."""

    async def find(self, token_hash: bytes) -> Actor | None:
        """The actor bound to an unrevoked token with this hash, if any."""
