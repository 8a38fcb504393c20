"""Shared helpers for use cases: retries, visibility, clocks."""

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

from domain.errors import Conflict, NotFound
from services.actors import Actor
from services.policy import Action, Decision, Resource, decide
from services.ports import A, Repository, VersionConflict

T = TypeVar("T")

MAX_ATTEMPTS = 12


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


async def retrying(attempt: Callable[[], Awaitable[T]], attempts: int = MAX_ATTEMPTS) -> T:
    """Run get-change-save again when another writer won the race.

    Each attempt reloads the aggregates, so a lost race either succeeds on
    fresh state or fails with the domain's own refusal (e.g. SlotTaken).
    """
    for n in range(attempts):
        try:
            return await attempt()
        except VersionConflict:
            # Jittered backoff: a busy day's writers spread out instead of
            # colliding again in lockstep.
            await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(n, 6)))
    raise Conflict("too many concurrent changes; try again")


async def get_or_404(repo: Repository, cls: type[A], aggregate_id: UUID, field: str) -> A:
    return or_404(cls, await repo.get(cls, aggregate_id), field)


def or_404(cls: type[A], found: object, field: str) -> A:
    """One answer of `get_many` that must exist (NotFound naming `field` otherwise)."""
    aggregate = typed(cls, found)
    if aggregate is None:
        raise NotFound(f"no such {cls.__name__.lower()}", field=field)
    return aggregate


def typed(cls: type[A], found: object) -> A | None:
    """One answer of `get_many`, as the class it was asked for (the repository
    answers None for an id of another kind, so anything else is a bug)."""
    if found is None:
        return None
    if not isinstance(found, cls):
        raise TypeError(f"asked for a {cls.__name__}, got {type(found).__name__}")
    return found


def require(
    actor: Actor,
    action: Action,
    resource: Resource,
    field: str,
    what: str | None = None,
    scopes: frozenset[str] = frozenset(),
) -> Decision:
    """Refuse exactly as if the object named by `field` did not exist."""
    decision = decide(actor, action, resource, scopes)
    if not decision.allowed:
        raise NotFound(f"no such {what or resource.kind.value}", field=field)
    return decision
