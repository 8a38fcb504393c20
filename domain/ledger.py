"""The access ledger: hash chains (shards) of who touched which personal data.

Every entry is an `AccessRecorded` event of one shard's log (shard 0 is
LEDGER_ID, the one chain of before shards; shard n is `shard_id(n)`),
numbered 1, 2, 3… within its shard by its originator_version. Its hash
covers the previous entry's hash and the record, not the number, so no entry
before the shard's head can be changed, removed, added or moved without
breaking a link, and which link breaks tells the kind of tampering (see
`ChainVerifier`). The event's own timestamp is not covered; the record's `at`
is. An entry's sequence, across shards, is its event's log position.

A chain alone cannot show that its tail was cut off or that it was rewritten
whole: `LedgerAnchored` events (their own chain, ANCHOR_ID) commit every
shard's head now and then, and are published outside the database too.
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple, get_args
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import DomainEvent

Action = Literal["read", "search", "export", "create", "change", "delete"]
# "refused": a change tried and refused (a domain rule, a conflict, bad
# input): nothing changed. A change that is made appends its "allowed" entry
# in the statement that appends its events (`Ledger.append_with`).
# "attempted": the write-ahead entry every write recorded before that (the
# change may then have been made); no longer written, still read.
Outcome = Literal["allowed", "denied", "not-found", "refused", "attempted"]
TamperKind = Literal["altered", "deleted", "inserted", "reordered"]

_ACTIONS, _OUTCOMES = frozenset(get_args(Action)), frozenset(get_args(Outcome))

# The `as_of` of an entry appended with the change it records: it reflects
# the log as of itself (its own sequence), which it cannot know beforehand.
AS_OF_ITSELF = -1

LEDGER_ID = uuid5(NAMESPACE_URL, "/carnet/access-ledger")
ANCHOR_ID = uuid5(NAMESPACE_URL, "/carnet/access-ledger/anchors")
GENESIS = "0" * 64


def shard_id(shard: int) -> UUID:
    """The aggregate id of a shard's chain: shard 0 is the ledger of before shards."""
    if shard < 0:
        raise ValueError(f"no shard {shard}")
    return LEDGER_ID if shard == 0 else uuid5(NAMESPACE_URL, f"/carnet/access-ledger/{shard}")


_SHARD_NUMBERS: dict[UUID, int] = {}


def shard_number(originator_id: UUID, limit: int = 4096) -> int | None:
    """Which shard an aggregate id is the chain of; None if it is no shard (below `limit`)."""
    if len(_SHARD_NUMBERS) < limit:
        _SHARD_NUMBERS.update({shard_id(n): n for n in range(limit)})
    return _SHARD_NUMBERS.get(originator_id)


# Fields that identify a patient: a disclosure that carries none of them is
# pseudonymous data about the patient (concerned, not identified).
IDENTITY_FIELDS = frozenset(
    {"patient_id", "patient_name", "first_name", "last_name", "birth_date", "email", "phone"}
)
CONTACT_FIELDS = frozenset({"email", "phone"})


@dataclass(frozen=True, kw_only=True)
class Disclosure:
    """One record an entry disclosed, changed or was refused: whose, whose controller, what.

    `identified` says whether the patient's identity reached the caller: a
    masked agenda line (an integration without the contact scope) concerns
    the patient but does not identify them. Every field added later needs a
    default (the hash leaves defaults out, as for the record).
    """

    record_id: str
    patient_id: str | None = None
    identified: bool = False
    practitioner_id: str | None = None
    establishment_id: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class AccessRecord:
    """One touch of personal data (who, what, why, outcome, when, where, as of).

    Modelled on FHIR AuditEvent / IHE BALP. Every field added later must have
    a default: a field at its default is left out of the hash, so entries
    written before the field existed still verify.
    """

    # who
    actor_kind: str
    actor_id: str
    on_behalf_of: str | None = None
    token_id: str | None = None
    integration_id: str | None = None
    # what
    action: Action
    resource_type: str
    record_ids: tuple[str, ...] = ()  # every record returned or changed (or asked for)
    patient_ids: tuple[str, ...] = ()  # every patient concerned, identified or not
    fields: tuple[str, ...] = ()  # data categories / fields actually disclosed
    # one item per record, pairing it with its patient, practitioner and
    # establishment (entries before v2 have none: see `disclosures`)
    items: tuple[Disclosure, ...] = ()
    # what the request itself asked for (practitioner, date range, search
    # terms), kept even when nothing matched; sorted (name, value) pairs
    selectors: tuple[tuple[str, str], ...] = ()
    # an idempotent replay: the same answer again, nothing new created
    replay: bool = False
    # why, and how it ended
    purpose: str = "treatment"
    outcome: Outcome = "allowed"
    # when and where
    at: datetime
    request_id: str = ""
    client_ip: str = ""
    user_agent: str = ""
    # the log position the disclosed data reflected, to rebuild it by replay;
    # for a read model, its checkpoint's transaction id too (it applies
    # events in (tx, position) order, so the position alone is not exact)
    as_of: int = 0
    as_of_tx: int = 0

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.outcome not in _OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.at.tzinfo is None:
            # A naive time would hash differently wherever it is read back.
            raise ValueError("`at` must be timezone-aware")

    def reflecting(self, sequence: int) -> "AccessRecord":
        """This record with its `as_of` said, for the entry at `sequence` (AS_OF_ITSELF)."""
        if self.as_of != AS_OF_ITSELF:
            return self
        return dataclasses.replace(self, as_of=sequence, as_of_tx=0)

    def disclosures(self) -> tuple[Disclosure, ...]:
        """The items; for an entry written before items existed, what can be told of them.

        Such an entry listed records and patients apart, so a record is paired
        with a patient only when the entry concerned exactly one.
        """
        if self.items or not self.record_ids:
            return self.items
        only = self.patient_ids[0] if len(self.patient_ids) == 1 else None
        identified = only is not None and bool(IDENTITY_FIELDS & set(self.fields))
        return tuple(
            Disclosure(record_id=r, patient_id=only, identified=identified, fields=self.fields)
            for r in self.record_ids
        )


@dataclass(frozen=True)
class AccessRecorded(DomainEvent):
    """An access record, durable in the log as one link of the chain."""

    record: AccessRecord
    prev_hash: str
    hash: str


class ShardHead(NamedTuple):
    """A shard's last entry as an anchor commits it (version 0: the shard was empty)."""

    shard: int
    version: int
    hash: str


@dataclass(frozen=True)
class LedgerAnchored(DomainEvent):
    """Every shard's head at one moment, chained to the anchor before it."""

    heads: tuple[ShardHead, ...]
    prev_hash: str
    hash: str


def anchor_hash(prev_hash: str, heads: Iterable[ShardHead]) -> str:
    """The hash of an anchor: the previous anchor's hash and the heads, sorted by shard."""
    canonical = _encode([[h.shard, h.version, h.hash] for h in sorted(heads)]).encode()
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


class Entry(NamedTuple):
    version: int  # within its shard
    record: AccessRecord
    prev_hash: str
    hash: str
    shard: int = 0
    sequence: int = 0  # its event's log position (0: not read from the log)


@dataclass(frozen=True)
class Finding:
    """The first entry at which the chain stops being what was written."""

    kind: TamperKind
    version: int
    detail: str
    shard: int = 0


# Field names and defaults, computed once: hashing is on every request's path.
_FIELDS = tuple((f.name, f.default) for f in dataclasses.fields(AccessRecord))
_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), default=lambda v: v.isoformat()
).encode  # tuples come out as lists; the only other non-JSON type is datetime


_ITEM_FIELDS = tuple((f.name, f.default) for f in dataclasses.fields(Disclosure))


def _item_state(item: Disclosure) -> dict[str, object]:
    return {n: getattr(item, n) for n, d in _ITEM_FIELDS if getattr(item, n) != d}


def canonical_bytes(record: AccessRecord) -> bytes:
    """The record as sorted, compact JSON, without the fields left at their default."""
    state: dict[str, object] = {}
    for name, default in _FIELDS:
        value = getattr(record, name)
        if value != default:
            state[name] = value
    if record.items:
        state["items"] = [_item_state(i) for i in record.items]
    return _encode(state).encode()


def chain_hash(prev_hash: str, record: AccessRecord) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical_bytes(record)).hexdigest()


def link(prev_hash: str, records: Iterable[AccessRecord]) -> list[tuple[str, str]]:
    """(prev_hash, hash) for each record appended after an entry hashed `prev_hash`."""
    links = []
    for record in records:
        digest = chain_hash(prev_hash, record)
        links.append((prev_hash, digest))
        prev_hash = digest
    return links


class ChainVerifier:
    """Checks entries fed in version order, holding a few hashes, not the chain.

    For each entry, in this order:
    - its version is not the next one: `deleted` (the first missing version);
    - its record does not hash to its stored hash: `altered`;
    - its prev_hash is not the previous entry's hash, then:
      - it is the hash two back: the previous entry was `inserted`;
      - it is the hash of a later entry: `reordered`;
      - the next entry links to the one before this: this one was `inserted`;
      - otherwise its predecessor is gone: `deleted`.
    """

    def __init__(self) -> None:
        self._expected = 1
        self._last = GENESIS  # hash of the last good entry
        self._before_last: str | None = None
        self._broken: Entry | None = None  # a bad link, still being classified
        self._broken_after = GENESIS
        self._after_broken = True  # the entry being fed directly follows the broken one
        self._finding: Finding | None = None

    @property
    def settled(self) -> bool:
        """True once more entries cannot change the result."""
        return self._finding is not None

    def feed(self, entry: Entry) -> None:
        if self._finding is not None:
            return
        if self._broken is not None:
            self._classify(entry.version, entry.prev_hash, entry.hash)
            return
        if self._missing(entry.version):
            return
        if chain_hash(entry.prev_hash, entry.record) != entry.hash:
            self._found("altered", entry.version, "its record does not match its hash")
            return
        if entry.prev_hash != self._last:
            if entry.prev_hash == self._before_last:
                self._found("inserted", entry.version - 1, f"entry {entry.version} links past it")
                return
            self._broken, self._broken_after, self._after_broken = entry, self._last, True
            return
        self._before_last, self._last = self._last, entry.hash
        self._expected += 1

    def feed_unreadable(self, version: int, detail: str) -> None:
        """An entry whose stored state cannot be decoded into a record."""
        if self._finding is not None:
            return
        if self._broken is not None:
            self._after_broken = False  # its hash is unknown: it can settle nothing
            return
        if not self._missing(version):
            self._found("altered", version, detail)

    def result(self) -> Finding | None:
        if self._finding is None and self._broken is not None:
            self._found(
                "deleted", self._broken.version, "the entry it links to is not in the chain"
            )
        return self._finding

    def _missing(self, version: int) -> bool:
        if version == self._expected:
            return False
        missing = f"{self._expected}..{version - 1}" if version > self._expected + 1 else ""
        self._found("deleted", self._expected, f"missing: {missing or self._expected}")
        return True

    def _classify(self, version: int, prev_hash: str, stored_hash: str) -> None:
        assert self._broken is not None
        broken = self._broken
        if stored_hash == broken.prev_hash:
            self._found(
                "reordered", broken.version, f"it links to entry {version}, which comes later"
            )
        elif self._after_broken and prev_hash == self._broken_after:
            self._found("inserted", broken.version, f"entry {version} links past it")
        self._after_broken = False

    def _found(self, kind: TamperKind, version: int, detail: str) -> None:
        self._finding = Finding(kind, version, detail)


def verify(entries: Iterable[Entry]) -> Finding | None:
    """The first altered, deleted, inserted or reordered entry; None if intact.

    Truncating the tail, or rewriting every hash from some entry on, leaves a
    chain that is intact by itself; only a head kept elsewhere can catch that.
    """
    verifier = ChainVerifier()
    for entry in entries:
        verifier.feed(entry)
        if verifier.settled:
            break
    return verifier.result()
