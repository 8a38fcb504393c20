"""What a scope answers: plain msgspec Structs, rendered as they are into scope.json.

Every field is documented in docs/analyst.md ("scope.json, field by field").
The order of the fields here is the order of the keys in scope.json; fields
added later get a default.
"""

from datetime import datetime
from typing import Any, Literal

import msgspec

Reason = Literal[
    "no-baseline", "address", "user-agent", "rate", "records", "practitioners", "refusals"
]
ChainState = Literal["intact", "tampered", "unchecked"]
BaselineRule = Literal["before-window", "learned", "none"]


class ScopeSelector(msgspec.Struct, frozen=True, kw_only=True):
    """Which entries to scope. Each set empty means any; `not_` sets exclude.

    The identity selectors (actors, tokens, integrations) also name whose
    baseline the anomaly start is measured against. The record selectors
    (patients, establishments, practitioners, records) are the reverse: every
    actor that touched them; only the disclosures they name are in scope.
    """

    actor_ids: tuple[str, ...] = ()
    token_ids: tuple[str, ...] = ()
    integration_ids: tuple[str, ...] = ()
    client_ips: tuple[str, ...] = ()
    user_agents: tuple[str, ...] = ()
    not_actor_ids: tuple[str, ...] = ()
    not_token_ids: tuple[str, ...] = ()
    not_integration_ids: tuple[str, ...] = ()
    not_client_ips: tuple[str, ...] = ()
    not_user_agents: tuple[str, ...] = ()
    patient_ids: tuple[str, ...] = ()
    establishment_ids: tuple[str, ...] = ()
    practitioner_ids: tuple[str, ...] = ()
    record_ids: tuple[str, ...] = ()
    since: datetime | None = msgspec.field(default=None, name="from")
    until: datetime | None = msgspec.field(default=None, name="to")

    @property
    def identity(self) -> bool:
        return bool(self.actor_ids or self.token_ids or self.integration_ids)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__struct_fields__)


class ScopeWindow(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime | None = msgspec.field(name="from")
    until: datetime | None = msgspec.field(name="to")
    log_start: datetime | None  # the `at` of the ledger's first entry
    reaches_before_log: bool  # no start, or a start before log_start
    first_sequence: int | None  # of the entries in scope
    last_sequence: int | None


class ScopeFinding(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # altered | deleted | inserted | reordered
    sequence: int
    detail: str


class ScopeChain(msgspec.Struct, frozen=True, kw_only=True):
    state: ChainState
    finding: ScopeFinding | None = None
    # the finding is at or before the last entry in scope: the scope itself may be wrong
    affects_scope: bool = False
    detail: str = ""


class ScopeSummary(msgspec.Struct, frozen=True, kw_only=True):
    entries: int  # ledger entries in scope, attempted ones included
    accesses: int  # allowed disclosures (one per entry and record)
    records: int
    appointments: int
    patients_identified: int
    patients_concerned_only: int
    practitioners: int
    establishments: int
    modified: int  # records created or changed
    denied: int
    not_found: int
    unsettled: int
    actors: int
    refused: int = 0  # writes tried and refused: nothing changed


class ScopeAccess(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    at: datetime
    actor_kind: str
    actor_id: str
    token_id: str | None
    action: str
    outcome: str
    resource_type: str
    request_id: str
    client_ip: str
    user_agent: str
    fields: tuple[str, ...]
    identified: bool
    replay: bool
    as_of: int
    as_of_tx: int
    values: dict[str, Any] | None  # as disclosed, rebuilt by replay; null: not replayable


class ScopeRecord(msgspec.Struct, frozen=True, kw_only=True):
    record_id: str
    kind: str  # appointment | patient | the resource type
    patient_id: str | None
    identified: bool  # some access disclosed whose record it is
    practitioner_id: str | None
    establishment_id: str | None
    first_at: datetime
    last_at: datetime
    accesses: tuple[ScopeAccess, ...]


class ScopePatient(msgspec.Struct, frozen=True, kw_only=True):
    patient_id: str
    identified: bool
    records: tuple[str, ...]
    establishments: tuple[str, ...]
    categories: tuple[str, ...]
    first_at: datetime
    last_at: datetime
    as_of: int  # the latest as_of of a disclosure about them: `contact` is as of it
    contact: dict[str, Any] | None  # identity and contact details then; null: unknown


class ScopeEstablishment(msgspec.Struct, frozen=True, kw_only=True):
    establishment_id: str  # "" for records no establishment controls (the platform's)
    patients_identified: tuple[str, ...]
    patients_concerned_only: tuple[str, ...]
    records: tuple[str, ...]


class ScopeCategory(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    label: str
    fields: tuple[str, ...]  # the fields of this category that were disclosed
    records: int
    patients: int


class ScopeCategories(msgspec.Struct, frozen=True, kw_only=True):
    disclosed: tuple[ScopeCategory, ...]
    not_disclosed: tuple[str, ...]  # category names
    modified: tuple[str, ...]  # record ids created or changed (idempotent replays excepted)
    statements: tuple[str, ...]  # e.g. "no contact details read", "nothing modified"


class ScopeAttempt(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    at: datetime
    actor_kind: str
    actor_id: str
    token_id: str | None
    action: str
    resource_type: str
    outcome: str
    request_id: str
    client_ip: str
    user_agent: str
    record_ids: tuple[str, ...]  # the ids it asked for
    patient_ids: tuple[str, ...]
    selectors: tuple[tuple[str, str], ...]


class ScopeAttempts(msgspec.Struct, frozen=True, kw_only=True):
    denied: tuple[ScopeAttempt, ...]
    not_found: tuple[ScopeAttempt, ...]
    # write-ahead entries with no entry saying how the request ended: the
    # change may have been made (databases written before writes appended
    # their entry with their events)
    unsettled: tuple[ScopeAttempt, ...]
    refused: tuple[ScopeAttempt, ...] = ()  # writes tried and refused: nothing changed


class ScopeBaseline(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime | None = msgspec.field(name="from")
    until: datetime | None = msgspec.field(name="to")
    entries: int
    client_ips: tuple[str, ...]
    user_agents: tuple[str, ...]
    peak_per_hour: int
    mean_per_hour: float
    peak_records_per_hour: int
    peak_refusals_per_hour: int
    practitioners: tuple[str, ...]
    records: int


class ScopeDeparture(msgspec.Struct, frozen=True, kw_only=True):
    reason: Reason
    detail: str


class ScopeAnomalyStart(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    at: datetime
    client_ip: str
    user_agent: str
    reasons: tuple[ScopeDeparture, ...]


class ScopeAnomaly(msgspec.Struct, frozen=True, kw_only=True):
    rule: BaselineRule
    actors: tuple[str, ...]  # whose entries the baseline is made of ("kind:id", "token:id")
    baseline: ScopeBaseline | None
    start: ScopeAnomalyStart | None
    note: str


class ScopeActor(msgspec.Struct, frozen=True, kw_only=True):
    actor_kind: str
    actor_id: str
    token_ids: tuple[str, ...]
    integration_id: str | None
    client_ips: tuple[str, ...]
    user_agents: tuple[str, ...]
    entries: int
    accesses: int
    refused: int
    records: tuple[str, ...]
    patients: tuple[str, ...]
    first_at: datetime
    last_at: datetime


class ScopeHour(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    accesses: int  # allowed entries
    refused: int  # denied and not-found entries


class ScopeTimeline(msgspec.Struct, frozen=True, kw_only=True):
    bucket_seconds: int  # 3600, or 86400 over a long window
    baseline_peak: int  # per bucket
    baseline_mean: float
    buckets: tuple[ScopeHour, ...]


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    generated_at: datetime
    awareness: datetime | None  # when the controller became aware (Art. 33(1)); null: not given
    selector: ScopeSelector
    window: ScopeWindow
    chain: ScopeChain
    summary: ScopeSummary
    records: tuple[ScopeRecord, ...]
    patients: tuple[ScopePatient, ...]
    appointments: tuple[str, ...]
    practitioners: tuple[str, ...]
    establishments: tuple[ScopeEstablishment, ...]
    categories: ScopeCategories
    attempts: ScopeAttempts
    anomaly: ScopeAnomaly
    actors: tuple[ScopeActor, ...]
    timeline: ScopeTimeline
