"""A write's access entry, appended in the one statement that appends its events.

The HTTP edge sets `WITNESS` around an audited write (infra.http.audit). The
stores that append a write's events (the repository, the token store) ask
the witness for the entry naming what they change and append both with
`Ledger.append_with`: either the change and the entry saying who made it are
in the log, or neither is. Outside an audited write (seeding, migrations,
the service layer's own tests) nothing is set and events go in alone.
"""

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from domain.ledger import AccessRecord
from infra.ledger import Ledger
from services.ports import Idempotency, Metadata


@dataclass
class Witness:
    ledger: Ledger
    entry: Callable[[Sequence[Any]], Awaitable[AccessRecord]]  # the aggregates saved → entry
    written: list[AccessRecord] = field(default_factory=list)  # the entries that went in

    async def append(
        self,
        stored: Sequence[StoredEvent],
        aggregates: Sequence[Any],
        meta: Metadata,
        idempotency: Idempotency | None,
        unchanged: Sequence[tuple[UUID, int]] = (),
    ) -> int:
        record = await self.entry(aggregates)
        position = await self.ledger.append_with(stored, meta, idempotency, record, unchanged)
        self.written.append(record)
        return position

    async def append_on(
        self, conn: Any, stored: Sequence[StoredEvent], aggregates: Sequence[Any], meta: Metadata
    ) -> int:
        """`append` inside the caller's transaction (the token store's index)."""
        record = await self.entry(aggregates)
        position = await self.ledger.append_with_on(conn, stored, meta, record)
        self.written.append(record)  # the caller's transaction may still roll back
        return position


WITNESS: ContextVar[Witness | None] = ContextVar("carnet_witness", default=None)
