"""The anomaly start: an actor's usual behaviour, and the first access that leaves it.

A baseline is what one actor (its tokens, its integration) did: the addresses
and user agents it came from, its busiest hour (accesses, distinct records,
refusals) and the practitioners it reached. Two rules say which entries it is
made of (docs/analyst.md, "The anomaly start"):

- `before-window`: the window has a start; the baseline is the actor's
  entries in the BASELINE_DAYS before it, frozen. The anomaly start is the
  first entry in scope, from that start on, that departs from it.
- `learned`: no start; the actor's entries are walked from its first. Those
  out of scope (the analyst set them aside: "not from its usual address")
  are the baseline. If the scope begins with the actor's very first entry,
  its first LEARN_HOURS of use (at least LEARN_ENTRIES entries) are learned
  as the baseline too. Every later entry in scope is compared with the
  baseline so far and joins it if it does not depart; the first that does
  is the anomaly start. An actor hostile from its first access is learned
  as it is: give the window a start to compare with what came before it.
"""

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from domain.ledger import AccessRecord
from services.scoping.model import (
    BaselineRule,
    Reason,
    ScopeAnomaly,
    ScopeAnomalyStart,
    ScopeBaseline,
    ScopeDeparture,
)

BASELINE_DAYS = 28
LEARN_HOURS = 24
LEARN_ENTRIES = 5
HOUR = timedelta(hours=1)
REFUSED = frozenset({"denied", "not-found"})


def touched(record: AccessRecord) -> tuple[set[str], set[str]]:
    """The records and practitioners an entry reached, asked for or named in its selectors."""
    items = record.disclosures()
    records = {i.record_id for i in items} or set(record.record_ids)
    practitioners = {i.practitioner_id for i in items if i.practitioner_id}
    practitioners |= {v for k, v in record.selectors if k == "practitioner_id"}
    return records, practitioners


def over(limit: int, seen: int, slack: int) -> bool:
    """Clearly above a baseline figure: twice it, and by more than `slack`."""
    return seen > 2 * limit and seen > limit + slack


class Trailing:
    """Counts over the hour up to the latest entry fed: entries, distinct records, refusals."""

    def __init__(self) -> None:
        self._items: deque[tuple[datetime, set[str], bool]] = deque()
        self._records: Counter[str] = Counter()
        self._refusals = 0

    def push(self, at: datetime, records: set[str], refused: bool) -> tuple[int, int, int]:
        while self._items and self._items[0][0] <= at - HOUR:
            _, gone, was_refused = self._items.popleft()
            self._records.subtract(gone)
            for r in gone:
                if self._records[r] <= 0:
                    del self._records[r]
            self._refusals -= was_refused
        self._items.append((at, records, refused))
        self._records.update(records)
        self._refusals += refused
        return len(self._items), len(self._records), self._refusals


@dataclass
class Profile:
    """A baseline being built: what the actor's entries had in common."""

    entries: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    ips: set[str] = field(default_factory=set)
    agents: set[str] = field(default_factory=set)
    practitioners: set[str] = field(default_factory=set)
    records: set[str] = field(default_factory=set)
    peak: int = 0
    peak_records: int = 0
    peak_refusals: int = 0
    _trailing: Trailing = field(default_factory=Trailing)

    def add(self, record: AccessRecord) -> None:
        records, practitioners = touched(record)
        self.entries += 1
        self.first_at = self.first_at or record.at
        self.last_at = record.at
        self.ips.add(record.client_ip)
        self.agents.add(record.user_agent)
        self.practitioners |= practitioners
        self.records |= records
        n, distinct, refused = self._trailing.push(record.at, records, record.outcome in REFUSED)
        self.peak = max(self.peak, n)
        self.peak_records = max(self.peak_records, distinct)
        self.peak_refusals = max(self.peak_refusals, refused)

    def departures(self, record: AccessRecord, now: tuple[int, int, int]) -> list[ScopeDeparture]:
        """Why this entry (with `now`: the trailing-hour counts of the scope) is unusual."""
        n, distinct, refused = now
        found = []
        if record.client_ip not in self.ips:
            found.append(
                ScopeDeparture(
                    reason="address",
                    detail=f"new address {record.client_ip or '(none)'} "
                    f"(baseline: {', '.join(sorted(self.ips)) or 'none'})",
                )
            )
        if record.user_agent not in self.agents:
            found.append(
                ScopeDeparture(reason="user-agent", detail=f"new user agent {record.user_agent!r}")
            )
        # (reason, seen in the hour, baseline peak per hour, least jump, what was seen)
        hourly: list[tuple[Reason, int, int, int, str]] = [
            ("rate", n, self.peak, 10, f"{n} accesses in the hour to {record.at.isoformat()}"),
            ("records", distinct, self.peak_records, 20, f"{distinct} distinct records in an hour"),
            ("refusals", refused, self.peak_refusals, 5, f"{refused} refused look-ups in an hour"),
        ]
        for reason, seen, peak, least, what in hourly:
            if over(peak, seen, least):
                found.append(
                    ScopeDeparture(reason=reason, detail=f"{what} (baseline peak {peak}/h)")
                )
        _, practitioners = touched(record)
        if self.records and (new := sorted(practitioners - self.practitioners)):
            found.append(
                ScopeDeparture(
                    reason="practitioners",
                    detail=f"practitioner(s) outside the baseline's {len(self.practitioners)}: "
                    + ", ".join(new[:5]),
                )
            )
        return found

    def baseline(self, since: datetime | None, until: datetime | None) -> ScopeBaseline:
        since, until = since or self.first_at, until or self.last_at
        hours = max(1.0, (until - since) / HOUR) if since and until else 1.0
        return ScopeBaseline(
            since=since or self.first_at,
            until=until or self.last_at,
            entries=self.entries,
            client_ips=tuple(sorted(self.ips)),
            user_agents=tuple(sorted(self.agents)),
            peak_per_hour=self.peak,
            mean_per_hour=round(self.entries / hours, 2),
            peak_records_per_hour=self.peak_records,
            peak_refusals_per_hour=self.peak_refusals,
            practitioners=tuple(sorted(self.practitioners)),
            records=len(self.records),
        )


class AnomalyFinder:
    """Fed the actor's entries in sequence order; says where the scope's behaviour changed."""

    def __init__(self, rule: BaselineRule, since: datetime | None, actors: Iterable[str]) -> None:
        self.rule = rule
        self.since = since
        self.actors = tuple(actors)
        self.profile = Profile()
        self.now = Trailing()
        self.start: ScopeAnomalyStart | None = None
        self._learning_until: datetime | None = None
        self._learn = False  # the scope began the actor's history: learn its first hours
        self._until: datetime | None = None  # where the baseline stopped growing

    @property
    def done(self) -> bool:
        return self.start is not None

    def before(self, record: AccessRecord) -> None:
        """An entry of the actor before the window (`before-window`)."""
        self.profile.add(record)

    def feed(self, sequence: int, record: AccessRecord, in_scope: bool) -> None:
        """An entry of the actor from the window's start on (or from its first, `learned`)."""
        if self.done:
            return
        now = (
            self.now.push(record.at, touched(record)[0], record.outcome in REFUSED)
            if in_scope
            else (0, 0, 0)
        )
        if not in_scope:
            self.profile.add(record)  # set aside by the analyst: the usual behaviour
            return
        if self.rule == "learned" and self._learning(record):
            self.profile.add(record)
            return
        if not self.profile.entries:
            reason = ScopeDeparture(
                reason="no-baseline", detail="no earlier access by this actor to compare with"
            )
            self._found(sequence, record, [reason])
            return
        found = self.profile.departures(record, now)
        if found:
            self._found(sequence, record, found)
        elif self.rule == "learned":
            self.profile.add(record)

    def _learning(self, record: AccessRecord) -> bool:
        """Whether this entry in scope is still learned (only if the scope began the history)."""
        if self._learning_until is None:
            self._learn = not self.profile.entries
            self._learning_until = record.at + timedelta(hours=LEARN_HOURS)
        return self._learn and (
            record.at < self._learning_until or self.profile.entries < LEARN_ENTRIES
        )

    def _found(self, sequence: int, record: AccessRecord, reasons: list[ScopeDeparture]) -> None:
        self._until = record.at
        self.start = ScopeAnomalyStart(
            sequence=sequence,
            at=record.at,
            client_ip=record.client_ip,
            user_agent=record.user_agent,
            reasons=tuple(reasons),
        )

    def result(self) -> ScopeAnomaly:
        if self.rule == "before-window":
            assert self.since is not None
            baseline = self.profile.baseline(None, self.since)
            note = f"baseline: the actor's entries in the {BASELINE_DAYS} days before the window"
        else:
            baseline = self.profile.baseline(None, self._until)
            note = (
                "baseline: the actor's entries out of scope, and (when the scope began with its "
                f"first entry) its first {LEARN_HOURS} h of use, then every entry until the "
                "anomaly start; give the window a start to compare with what came before it"
            )
        if self.start is None:
            note += "; no entry in scope departs from it"
        return ScopeAnomaly(
            rule=self.rule,
            actors=self.actors,
            baseline=baseline if self.profile.entries else None,
            start=self.start,
            note=note,
        )


def no_anomaly(note: str) -> ScopeAnomaly:
    return ScopeAnomaly(rule="none", actors=(), baseline=None, start=None, note=note)
