"""The scoping use case on PostgreSQL: the access index, replay, the chain check."""

from collections.abc import Iterable

import asyncpg

from domain.ledger import AccessRecord, Disclosure, Finding
from infra import access_index
from infra.codec import TypedMapper
from infra.deadlines import bounded
from infra.keyring import keyring_of
from infra.ledger import verify_ledger
from infra.replay import PostgresPointInTime
from services.ports import Clock, LedgerQuery
from services.scoping import Scope, ScopingService
from services.scoping.service import EntrySource

PAGE_SECONDS = 30.0  # one page of the search, even when the database hangs


class IndexedLedger:
    """Ledger search straight through the access index, for a command that caught it up."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.mapper = TypedMapper(keyring_of(pool))

    async def ledger_entries(self, query: LedgerQuery) -> list[tuple[int, AccessRecord]]:
        return await bounded(self._find(query), PAGE_SECONDS, "the access index")

    async def _find(self, query: LedgerQuery) -> list[tuple[int, AccessRecord]]:
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            return await access_index.find(conn, query, self.mapper)


def scoping_service(
    pool: asyncpg.Pool,
    clock: Clock,
    *,
    entries: EntrySource | None = None,
    chain_seconds: float,
) -> ScopingService:
    """A ScopingService whose chain check gives up (`unchecked`) after `chain_seconds`."""
    replay = PostgresPointInTime(pool)

    async def chain() -> Finding | None:
        return await bounded(verify_ledger(pool), chain_seconds, "the hash chain check")

    async def prefetch(ids: list[str]) -> None:
        await replay.prefetch(ids)

    return ScopingService(entries or IndexedLedger(pool), replay, chain, clock, prefetch)


def disclosed_by(scope: Scope) -> list[Disclosure]:
    """What handing this scope to someone discloses: its records' values, its contacts."""
    items = [
        Disclosure(
            record_id=r.record_id,
            patient_id=r.patient_id,
            identified=r.identified,
            practitioner_id=r.practitioner_id,
            establishment_id=r.establishment_id,
            fields=tuple(sorted({f for a in r.accesses if a.values for f in a.values})),
        )
        for r in scope.records
    ]
    items += [
        Disclosure(
            record_id=p.patient_id,
            patient_id=p.patient_id,
            identified=True,
            fields=tuple(sorted(p.contact)),
        )
        for p in scope.patients
        if p.contact
    ]
    return items


def reflected(scope: Scope) -> int:
    """The latest log position any value in the scope was rebuilt to."""
    positions: Iterable[int] = [
        *(a.as_of for r in scope.records for a in r.accesses),
        *(p.as_of for p in scope.patients),
    ]
    return max(positions, default=0)
