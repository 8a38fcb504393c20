"""Helpers for tests that read the access ledger back: what a call left there."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from domain.ledger import Entry
from infra.http.keys import Services
from infra.ledger import read_chain
from services.actors import ActorKind
from tests.conftest import T0
from tests.world import META, ROOT, World

OUTCOME_OF_STATUS = {200: "allowed", 201: "allowed", 401: "denied", 403: "denied", 404: "not-found"}


@dataclass
class LedgerWatch:
    """Remembers the ledger's last sequence so a test can ask what one call appended."""

    pool: asyncpg.Pool
    head: int = 0

    async def mark(self) -> None:
        chain = await read_chain(self.pool)
        self.head = chain[-1].sequence if chain else 0

    async def new(self) -> list[Entry]:
        """The entries appended since the last mark (and mark again)."""
        fresh = [e for e in await read_chain(self.pool) if e.sequence > self.head]
        if fresh:
            self.head = fresh[-1].sequence
        return fresh


def settled(entries: list[Entry]) -> list[Entry]:
    """The entries that say how calls ended, without write-ahead "attempted" ones.

    A write may be recorded as "attempted" before it is made (so that no change
    is ever made unrecorded); each such entry must be followed by the entry
    saying how the same request ended.
    """
    done = [e for e in entries if e.record.outcome != "attempted"]
    for ahead in (e for e in entries if e.record.outcome == "attempted"):
        assert ahead.record.action in ("create", "change", "delete"), ahead
        assert any(
            e.sequence > ahead.sequence and e.record.request_id == ahead.record.request_id
            for e in done
        ), ahead
    return done


def slots(day: int = 1) -> Iterator[str]:
    """Free Paris 20-minute slots from Wednesday on, as UTC ISO instants, in order.

    Opening hours are 09-12 and 14-18 on weekdays (tests/world.py). The clock
    starts Tuesday 08:00 Paris (07:00 UTC), so day 1 is Wednesday.
    """
    while True:
        when = T0 + timedelta(days=day)
        if when.weekday() < 5:
            for hour in (*range(9, 12), *range(14, 18)):
                for minute in (0, 20, 40):
                    # 09:00 Paris is 08:00 UTC in December.
                    start = when.replace(hour=hour - 1, minute=minute)
                    yield start.isoformat().replace("+00:00", "Z")
        day += 1


async def more_actors(services: Services, world: World) -> None:
    """Add "reader" (an integration granted agenda:read on the first practitioner)
    and "operator" to the world's tokens and actors."""
    reader = await services.credentials.issue_token(
        ROOT, META, ActorKind.INTEGRATION, label="Agenda Reader Pro"
    )
    await services.credentials.grant(
        ROOT, META, world.practitioner, reader.actor.id, ("agenda:read",)
    )
    operator = await services.credentials.issue_token(
        ROOT, META, ActorKind.OPERATOR, label="on-call"
    )
    for name, issued in (("reader", reader), ("operator", operator)):
        world.tokens[name] = issued.secret
        world.actors[name] = issued.actor
