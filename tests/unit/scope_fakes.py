"""In-memory stand-ins for what scoping reads: the ledger, the replayed log, the chain check."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.ledger import AccessRecord, Disclosure, Finding
from services.ports import LedgerQuery, Unavailable
from services.scoping import ScopingService
from tests.conftest import FakeClock

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
AGENDA = ("id", "start", "end", "motive_id", "motive_name", "patient_id", "patient_name", "status")
MASKED = tuple(f for f in AGENDA if not f.startswith("patient"))
PATIENT = ("id", "first_name", "last_name", "birth_date", "sex", "email", "phone")


def item(
    record: str,
    patient: str | None = None,
    *,
    fields: Iterable[str] = AGENDA,
    practitioner: str | None = "dr-1",
    establishment: str | None = "cab-a",
) -> Disclosure:
    fields = tuple(fields)
    return Disclosure(
        record_id=record,
        patient_id=patient,
        identified=patient is not None and bool({"patient_id", "patient_name"} & set(fields)),
        practitioner_id=practitioner,
        establishment_id=establishment,
        fields=fields,
    )


def _matches(values: Iterable[str | None], wanted: frozenset[str]) -> bool:
    return not wanted or bool(wanted & {v for v in values if v})


@dataclass
class FakeLedger:
    """The access ledger as a list, searched as the access index does (services.ports)."""

    entries: list[tuple[int, AccessRecord]] = field(default_factory=list)
    clock: datetime = T0
    queries: list[LedgerQuery] = field(default_factory=list)

    def add(
        self,
        *,
        minutes: float = 5,
        actor: str = "soft",
        kind: str = "integration",
        token: str | None = "tok-1",
        ip: str = "10.0.0.1",
        ua: str = "PracticeSoft/3.2",
        items: Iterable[Disclosure] = (),
        outcome: str = "allowed",
        action: str = "read",
        resource: str = "agenda",
        record_ids: Iterable[str] = (),
        patient_ids: Iterable[str] = (),
        as_of: int | None = None,
        request_id: str | None = None,
        selectors: tuple[tuple[str, str], ...] = (),
        replay: bool = False,
    ) -> int:
        """Append an entry `minutes` after the previous one; its sequence."""
        self.clock += timedelta(minutes=minutes)
        sequence = len(self.entries) + 1
        items = tuple(items)
        record = AccessRecord(
            actor_kind=kind,
            actor_id=actor,
            token_id=token,
            integration_id=actor if kind == "integration" else None,
            action=action,  # type: ignore[arg-type]
            resource_type=resource,
            record_ids=tuple(dict.fromkeys([*(i.record_id for i in items), *record_ids])),
            patient_ids=tuple(
                dict.fromkeys([*(i.patient_id for i in items if i.patient_id), *patient_ids])
            ),
            fields=tuple(dict.fromkeys(f for i in items for f in i.fields)),
            items=items,
            selectors=selectors,
            replay=replay,
            outcome=outcome,  # type: ignore[arg-type]
            at=self.clock,
            request_id=request_id or f"req-{sequence}",
            client_ip=ip,
            user_agent=ua,
            as_of=(sequence * 10 if outcome == "allowed" else 0) if as_of is None else as_of,
        )
        self.entries.append((sequence, record))
        return sequence

    async def ledger_entries(self, q: LedgerQuery) -> list[tuple[int, AccessRecord]]:
        self.queries.append(q)
        found = []
        for sequence, r in self.entries:
            items = r.items
            if sequence <= q.after or not self._who(q, r):
                continue
            if (q.since and r.at < q.since) or (q.until and r.at >= q.until):
                continue
            if q.outcomes and r.outcome not in q.outcomes:
                continue
            if not (
                _matches([*(i.patient_id for i in items), *r.patient_ids], q.patient_ids)
                and _matches([*(i.record_id for i in items), *r.record_ids], q.record_ids)
                and _matches([i.practitioner_id for i in items], q.practitioner_ids)
                and _matches([i.establishment_id for i in items], q.establishment_ids)
            ):
                continue
            found.append((sequence, r))
            if len(found) == q.limit:
                break
        return found

    @staticmethod
    def _who(q: LedgerQuery, r: AccessRecord) -> bool:
        pairs = (
            (r.actor_id, q.actor_ids, q.not_actor_ids),
            (r.token_id, q.token_ids, q.not_token_ids),
            (r.integration_id, q.integration_ids, q.not_integration_ids),
            (r.client_ip, q.client_ips, q.not_client_ips),
            (r.user_agent, q.user_agents, q.not_user_agents),
        )
        return all((not yes or v in yes) and v not in no for v, yes, no in pairs)


@dataclass
class FakePointInTime:
    """Values that say which record, field and position they were rebuilt for."""

    calls: list[tuple[str, str, int, int]] = field(default_factory=list)
    # patient -> [(from position, contact)], in position order
    contacts: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)

    async def values(
        self, resource_type: str, item: Disclosure, as_of: int, as_of_tx: int = 0
    ) -> dict[str, object]:
        self.calls.append((resource_type, item.record_id, as_of, as_of_tx))
        return {f: f"{item.record_id}.{f}@{as_of}" for f in item.fields}

    async def contact(self, patient_id: str, as_of: int) -> dict[str, object] | None:
        then = [c for position, c in self.contacts.get(patient_id, []) if position <= as_of]
        return then[-1] if then else None


@dataclass
class FakeChain:
    finding: Finding | None = None
    down: bool = False

    async def __call__(self) -> Finding | None:
        if self.down:
            raise Unavailable("no answer within 2 s")
        return self.finding


ATTACKER: dict[str, Any] = {"ip": "203.0.113.9", "ua": "python-requests/2.31"}


def service(ledger: FakeLedger, chain: FakeChain | None = None) -> ScopingService:
    return ScopingService(ledger, FakePointInTime(), chain or FakeChain(), FakeClock(T0))


def stolen_token(ledger: FakeLedger, days: int = 3) -> int:
    """The legitimate software syncs one agenda for days; then the attacker walks others.

    Returns the sequence of the attacker's first request."""
    for n in range(days * 24):
        ledger.add(minutes=60, items=[item(f"ap-{n % 4}", f"pat-{n % 4}")])
    first = ledger.add(minutes=7, **ATTACKER, items=[item("ap-90", "pat-90", practitioner="dr-2")])
    for n in range(30):
        ledger.add(minutes=1, **ATTACKER, items=[item(f"ap-{100 + n}", f"pat-{100 + n}")])
        ledger.add(minutes=1, items=[item("ap-1", "pat-1")])  # the software, still syncing
    return first
