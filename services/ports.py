"""Ports the use cases depend on. Adapters live in infra/; fakes in tests."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.credentials import Grant, Token
from domain.ledger import AccessRecord, Disclosure
from domain.values import Absence, BookingPolicy, Interval, Motive, OpeningHours

A = TypeVar("A", bound=Aggregate)


class VersionConflict(Exception):
    """Another writer appended to one of the aggregates first."""


class StaleRead(VersionConflict):
    """An aggregate a write was decided on (read from memory) had changed in the log."""


class Unavailable(Exception):
    """The event store cannot be reached right now."""


class LedgerUnavailable(Unavailable):
    """An access could not be made durable: disclose nothing (fail closed)."""


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

    async def get_many(
        self, wanted: Sequence[tuple[type[A], UUID]], *, remembered: bool = False
    ) -> list[A | None]:
        """Each (class, id) as `get` would answer it, in order, in one round trip.

        `remembered`: as this process last knew them, with no round trip when it
        knows them all; possibly stale. For a write only: what it decides on must
        go to `save` (as changed or `relied_on`), and a refusal must be decided
        again on a plain read.
        """

    async def save(
        self,
        aggregates: Sequence[Aggregate],
        meta: Metadata,
        idempotency: Idempotency | None = None,
        *,
        relied_on: Sequence[Aggregate | None] = (),
    ) -> int:
        """Append all pending events atomically; return the last position.

        VersionConflict if another writer appended to one of `aggregates` first;
        StaleRead (one) if one of `relied_on` (read, not changed; None is
        skipped) is no longer at the version it was read at. Nothing is saved
        then, and the caller retries on fresh reads.
        """

    async def history(self, aggregate_id: UUID) -> list[Any]:
        """Every event of one aggregate, oldest first, decoded (personal fields of an
        erased person read as None): what the aggregate was at each step."""

    async def idempotent_result(self, scope: str, key: str) -> IdempotentResult | None:
        """The stored answer to an earlier request with this key, if any."""


class AccessLedger(Protocol):
    async def record(self, record: AccessRecord) -> int:
        """Return the entry's sequence number once durable; else raise LedgerUnavailable."""


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""


@dataclass(frozen=True)
class TokenView:
    """What authentication needs to know of a token, from the token index."""

    token_id: UUID
    actor_kind: str
    actor_id: UUID
    establishment_id: UUID | None
    display_name: str
    state: str
    expires_at: datetime | None


@dataclass(frozen=True)
class TokenRow:
    """A token as an admin lists it: never its secret nor its hash."""

    token_id: UUID
    actor_kind: str
    actor_id: UUID
    establishment_id: UUID | None
    display_name: str
    state: str
    expires_at: datetime | None
    created: datetime
    position: int  # of its Issued event: the listing's order and cursor
    reason: str = ""  # why it was revoked or suspended ("" while active)
    # Its last request recorded in the access ledger (from the access index, a
    # read model: it lags by milliseconds, and routes that touch no personal
    # data and no credential are not recorded).
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class TokenQuery:
    """Which tokens to list: each set empty means any; after `after` (a cursor)."""

    actor_ids: frozenset[UUID] = frozenset()
    actor_kinds: frozenset[str] = frozenset()
    states: frozenset[str] = frozenset()
    establishment_ids: frozenset[UUID] = frozenset()
    after: int = 0
    limit: int = 100


@dataclass(frozen=True)
class GrantRow:
    """A grant in force (scopes never empty)."""

    grant_id: UUID
    practitioner_id: UUID
    integration_id: UUID
    scopes: tuple[str, ...]
    position: int  # of its Given event: the listing's order and cursor


@dataclass(frozen=True)
class GrantQuery:
    practitioner_ids: frozenset[UUID] = frozenset()
    integration_ids: frozenset[UUID] = frozenset()
    after: int = 0
    limit: int = 100


class TokenStore(Protocol):
    """Tokens and integration grants: their events, and the indexes kept with them."""

    async def save(self, token: Token, meta: Metadata) -> int:
        """Append the token's pending events and update the token index, atomically."""

    async def save_all(self, tokens: Sequence[Token], meta: Metadata) -> int:
        """Several tokens' events and index rows in one transaction (a rotation)."""

    async def find(self, token_hash: bytes) -> TokenView | None:
        """The token with this hash, whatever its state."""

    async def tokens(self, query: TokenQuery) -> list[TokenRow]:
        """Tokens matching the query, in the order they were issued."""

    async def save_grant(self, grant: Grant, meta: Metadata) -> int:
        """Append the grant's pending events and update the grant index, atomically."""

    async def grants(self, query: GrantQuery) -> list[GrantRow]:
        """Grants in force matching the query, in the order they were first given."""


# -- read models ------------------------------------------------------------


@dataclass(frozen=True)
class EstablishmentRow:
    id: UUID
    name: str
    address: str
    city: str
    timezone: str


@dataclass(frozen=True)
class PractitionerRow:
    id: UUID
    name: str
    specialty: str
    establishment_id: UUID
    city: str | None
    timezone: str
    motives: tuple[Motive, ...]
    hours: tuple[OpeningHours, ...]
    absences: tuple[Absence, ...]
    policy: BookingPolicy


@dataclass(frozen=True)
class AgendaEntry:
    appointment_id: UUID
    start: datetime
    end: datetime
    motive_id: str
    motive_name: str | None
    patient_id: UUID | None  # None when masked
    patient_name: str | None
    status: str
    source: str
    replaces: UUID | None
    replaced_by: UUID | None


@dataclass(frozen=True)
class PatientAppointment:
    appointment_id: UUID
    practitioner_id: UUID
    practitioner_name: str | None
    specialty: str | None
    establishment_id: UUID
    establishment_name: str | None
    address: str | None
    city: str | None
    motive_id: str
    start: datetime
    end: datetime
    status: str
    replaces: UUID | None
    replaced_by: UUID | None
    cancellation_reason: str | None = None  # as the canceller gave it (None: erased)


@dataclass(frozen=True)
class AccessLogEntry:
    """One line of a patient's access log, in words a patient understands."""

    sequence: int
    at: datetime
    actor: str
    action: str
    resource_type: str
    outcome: str
    fields: tuple[str, ...]
    identified: bool = True  # False: the actor saw data about the patient, not who they are


@dataclass(frozen=True)
class LedgerQuery:
    """Which access entries to find (the access index answers it).

    Each selector is a set: empty means any. A `not_` set excludes entries
    that match it ("token T, not from its usual address"). The patient,
    record, practitioner and establishment selectors match an entry if any
    of its items (or, for a refusal, the ids it asked for) names them.
    Entries come in sequence order, after `after` (a cursor: the last
    sequence of the previous page), at most `limit` of them.
    """

    actor_ids: frozenset[str] = frozenset()
    token_ids: frozenset[str] = frozenset()
    integration_ids: frozenset[str] = frozenset()
    client_ips: frozenset[str] = frozenset()
    user_agents: frozenset[str] = frozenset()
    not_actor_ids: frozenset[str] = frozenset()
    not_token_ids: frozenset[str] = frozenset()
    not_integration_ids: frozenset[str] = frozenset()
    not_client_ips: frozenset[str] = frozenset()
    not_user_agents: frozenset[str] = frozenset()
    patient_ids: frozenset[str] = frozenset()
    record_ids: frozenset[str] = frozenset()
    practitioner_ids: frozenset[str] = frozenset()
    establishment_ids: frozenset[str] = frozenset()
    outcomes: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    resource_types: frozenset[str] = frozenset()
    since: datetime | None = None  # at >= since
    until: datetime | None = None  # at < until
    after: int = 0
    limit: int = 500


class PointInTime(Protocol):
    """The log replayed to a past position: what a record held when it was disclosed."""

    async def values(
        self, resource_type: str, item: Disclosure, as_of: int, as_of_tx: int = 0
    ) -> dict[str, object]:
        """The disclosed fields of `item` as the answer carried them, rebuilt by replay."""

    async def contact(self, patient_id: str, as_of: int) -> dict[str, object] | None:
        """The patient's identity and contact details at that position, or None if unknown."""


class PatientAppointments(Protocol):
    async def future_booked(self, patient_id: UUID, now: datetime) -> list[UUID]:
        """The patient's appointments still booked and not yet begun, once the
        read model holds everything the log held when asked (for an erasure)."""

    async def cancelled_on_erasure(self, patient_id: UUID) -> list[UUID]:
        """The patient's appointments an erasure cancelled, whichever request did it."""


class RetentionCandidates(Protocol):
    async def past_retention(self, cutoff: datetime, limit: int) -> list[UUID]:
        """Patients not yet erased, registered before `cutoff`, none of whose
        appointments ends at or after it (the retention policy's reach)."""


class Shredder(Protocol):
    async def shred(self, subject: UUID) -> None:
        """Destroy the data subject's key: their personal fields read as erased."""


class ReadModels(Protocol):
    async def establishment(self, establishment_id: UUID) -> EstablishmentRow | None:
        """One establishment from the directory."""

    async def establishments(self, city: str | None, limit: int) -> list[EstablishmentRow]:
        """Establishments, optionally in one city."""

    async def practitioners(
        self,
        model: str,
        *,
        ids: Sequence[UUID] | None = None,
        specialty: str | None = None,
        city: str | None = None,
        limit: int = 50,
    ) -> list[PractitionerRow]:
        """Practitioners from one read model's copy of the directory, filtered."""

    async def booked(
        self, practitioner_ids: Sequence[UUID], first: date, last: date
    ) -> dict[UUID, list[Interval]]:
        """Reserved intervals per practitioner over local days first..last."""

    async def agenda(
        self, practitioner_id: UUID, day: date
    ) -> tuple[UUID, list[AgendaEntry]] | None:
        """The practitioner's establishment and appointments that day, or None if unknown."""

    async def patient_appointments(self, patient_id: UUID) -> list[PatientAppointment]:
        """A patient's appointments, soonest first."""

    async def access_log(self, patient_id: UUID, limit: int) -> list[AccessLogEntry]:
        """Who touched this patient's data, newest first."""

    async def ledger_entries(self, query: LedgerQuery) -> list[tuple[int, AccessRecord]]:
        """Access-ledger entries (sequence, record) matching the query, in order."""


# -- admission: the shared rate limit and enumeration counters ---------------


@dataclass(frozen=True)
class RateLimit:
    """One token's budget: `burst` requests at once, refilled at `rate_per_second`."""

    rate_per_second: float
    burst: int


@dataclass(frozen=True)
class Admitted:
    """A request's bearer token, looked up and charged in one step.

    `view` is None for a hash no token has (nothing is charged then); `wait`
    is 0 when the request was granted one unit of its token's budget, else
    the seconds until one will be there (nothing was taken).
    """

    view: TokenView | None
    wait: float = 0.0


class Admission(Protocol):
    """The per-token budgets every worker shares (infra/admission.py).

    Shared, so that N processes grant what one would: the sum granted to a
    token by every process never exceeds burst + rate x elapsed.
    """

    async def admit(self, token_hash: bytes, limit: RateLimit) -> Admitted:
        """Look the token up, fresh, and take one unit from its bucket if it exists."""

    async def miss(self, token_id: UUID, limit: int, window_seconds: float) -> int | None:
        """Count a not-found/denied look-up; the count, once, when it reaches `limit`
        within `window_seconds` (the window then starts again)."""
