"""What `carnet tokens` and `carnet grants` share: the credential use cases, and
an access-ledger entry for every command, as the admin routes leave one.

The command line acts as the admin "cli". A change is recorded ahead
("attempted", as the API does for its writes), then how it ended: "allowed",
or "not-found" / "denied" when refused; a listing is recorded once it is
read, before anything is printed (fail closed, as the API).
"""

import argparse
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from domain.errors import DomainError, Forbidden, InvalidValue, NotFound
from domain.ledger import AccessRecord, Outcome
from infra.eventstore import EventStore
from infra.ledger import Ledger
from infra.repository import PostgresRepository
from infra.tokens import PostgresTokenStore
from services.actors import Actor, ActorKind
from services.common import SystemClock
from services.credentials import CredentialService
from services.ports import Metadata

T = TypeVar("T")
CLI_ADMIN = Actor(ActorKind.ADMIN, UUID(int=0))
CLI_ID = "cli"
WRITES = frozenset({"create", "change", "delete"})
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def an_id(value: str) -> UUID:
    """An id as the API spells it (argparse names the flag when this refuses)."""
    if not _UUID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an id (8-4-4-4-12 hex digits)")
    return UUID(value)


def bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not re.fullmatch(r"[0-9]{1,18}", value) or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"{value!r}: a whole number from {low} to {high}")
        return int(value)

    return parse


@dataclass
class Noted:
    """What a command touched, for its entry."""

    record_ids: list[str] = field(default_factory=list)
    fields: tuple[str, ...] = ()
    as_of: int = 0


class AdminCommand:
    """One run of a credential command: its services and its ledger entries."""

    def __init__(self, pool: asyncpg.Pool, name: str, args: argparse.Namespace) -> None:
        store = EventStore(pool)
        repo = PostgresRepository(store)
        self.pool = pool
        self.store = store
        self.name = name  # e.g. "carnet tokens revoke"
        self.actor = CLI_ADMIN
        self.credentials = CredentialService(
            repo, SystemClock(), PostgresTokenStore(store, repo.mapper)
        )
        self.request_id = f"cli-{uuid.uuid4().hex}"
        self.meta = Metadata(
            actor_kind=CLI_ADMIN.kind.value,
            actor_id=CLI_ID,
            request_id=self.request_id,
            correlation_id=self.request_id,
        )
        self.selectors = _selectors(args)

    async def head(self) -> int:
        return await self.store.last_position()

    def _record(
        self,
        resource: str,
        action: str,
        outcome: Outcome,
        noted: Noted,
    ) -> AccessRecord:
        return AccessRecord(
            actor_kind=CLI_ADMIN.kind.value,
            actor_id=CLI_ID,
            action=action,  # type: ignore[arg-type]
            resource_type=resource,
            record_ids=tuple(dict.fromkeys(noted.record_ids)),
            fields=noted.fields,
            selectors=self.selectors,
            purpose="administration",
            outcome=outcome,
            at=datetime.now(UTC),
            request_id=self.request_id,
            user_agent=self.name,
            as_of=noted.as_of,
        )

    async def audited(
        self,
        resource: str,
        action: str,
        asked: Sequence[object],
        work: Callable[[], Awaitable[tuple[T, Noted]]],
    ) -> T:
        """Run `work`, recorded in the access ledger as the API records a route."""
        ledger = Ledger(self.store)
        tried = Noted(record_ids=[str(a) for a in asked])
        try:
            if action in WRITES:
                await ledger.record(self._record(resource, action, "attempted", tried))
            try:
                result, noted = await work()
            except NotFound:
                await ledger.record(self._record(resource, action, "not-found", tried))
                raise
            except Forbidden:
                await ledger.record(self._record(resource, action, "denied", tried))
                raise
            await ledger.record(self._record(resource, action, "allowed", noted))
        finally:
            await ledger.close()
        return result


def _selectors(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The flags given, as the API keeps a request's path ids and query parameters."""
    pairs = set()
    for name, value in vars(args).items():
        if name in ("command", "json", "func") or name.endswith("_command") or value is None:
            continue
        values = value if isinstance(value, list) else [value]
        pairs |= {(name, str(v)[:200]) for v in values if v is not False}
    return tuple(sorted(pairs))[:16]


def refused(prog: str, error: DomainError) -> int:
    """A refusal said on stderr; 2 for a bad value, 1 otherwise."""
    where = f" ({error.field})" if error.field else ""
    print(f"{prog}: {error.detail}{where}", file=sys.stderr)
    return 2 if isinstance(error, InvalidValue) else 1


_encode = msgspec.json.Encoder().encode


class _Row(Protocol):
    @property
    def position(self) -> int: ...


R = TypeVar("R", bound=_Row)


async def every_page(
    fetch: Callable[[int], Awaitable[Sequence[R]]], after: int, wanted: int | None, page: int
) -> list[R]:
    """Rows from `after` on, page by page, until `wanted` of them or the end."""
    found: list[R] = []
    while wanted is None or len(found) < wanted:
        rows = await fetch(after)
        found += rows
        if len(rows) < page:
            break
        after = rows[-1].position
    return found[:wanted] if wanted is not None else found


def json_line(obj: Any) -> None:
    sys.stdout.buffer.write(_encode(obj) + b"\n")
    sys.stdout.flush()


def inert(cell: str) -> str:
    """A cell as a terminal may show it: every character that is not printable
    (line breaks, tabs, escape sequences, bidirectional overrides) spelled as
    a backslash escape, so that text from the log can neither start a row nor
    recolour, clear or reorder the screen."""
    if cell.isprintable():
        return cell
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cell)


def table(rows: list[list[str]], header: list[str]) -> None:
    """Columns padded to their widest cell; the last one left ragged; cells inert."""
    rows = [[inert(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"
