"""Scope a breach: what one actor (or everyone who touched a patient) saw, and whom to tell.

Get the entries the selector matches from the access ledger, sort them into
disclosures and attempts, rebuild each disclosed value by replaying the log
to the entry's `as_of` (PointInTime), then say it per record, patient and
establishment, by data category, with the actor's anomaly start and the
state of the hash chain. DESIGN decision 11: the ledger says what was
disclosed, replay says what it held.
"""

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from domain.errors import Forbidden, InvalidValue
from domain.ledger import AccessRecord, Disclosure
from domain.ledger import Finding as ChainFinding
from services.actors import Actor
from services.policy import Action, Kind, Resource, allowed
from services.ports import Clock, LedgerQuery, PointInTime, Unavailable
from services.scoping import summary as sm
from services.scoping.anomaly import BASELINE_DAYS, AnomalyFinder, no_anomaly
from services.scoping.entries import UNBOUNDED, Entry, Limits, Sorted, Work, access
from services.scoping.model import (
    Scope,
    ScopeAnomaly,
    ScopeChain,
    ScopeFinding,
    ScopeRecord,
    ScopeSelector,
    ScopeWindow,
)

PAGE = 1000
Progress = Callable[[str, int, int | None], None]  # (phase, done, total or None)
ChainCheck = Callable[[], Awaitable[ChainFinding | None]]
# Told every record and patient id before their values are asked for, so that an
# adapter can load them in a few reads rather than one each.
Prefetch = Callable[[list[str]], Awaitable[None]]


class EntrySource(Protocol):
    async def ledger_entries(self, query: LedgerQuery) -> list[tuple[int, AccessRecord]]:
        """Access-ledger entries (sequence, record) matching the query, in sequence order."""


def _quiet(phase: str, done: int, total: int | None) -> None:
    pass


async def _nothing(ids: list[str]) -> None:
    pass


def query(selector: ScopeSelector, **overrides: Any) -> LedgerQuery:
    """The ledger search for a selector (overrides: its window, say)."""
    given: dict[str, Any] = {
        f: frozenset(getattr(selector, f))
        for f in selector.__struct_fields__
        if f not in ("since", "until")
    }
    given |= {"since": selector.since, "until": selector.until, "limit": PAGE} | overrides
    return LedgerQuery(**given)


def identity_of(selector: ScopeSelector) -> ScopeSelector:
    """Only whose entries they are: the actor's own behaviour, from anywhere, at any time."""
    return ScopeSelector(
        actor_ids=selector.actor_ids,
        token_ids=selector.token_ids,
        integration_ids=selector.integration_ids,
    )


class ScopingService:
    def __init__(
        self,
        entries: EntrySource,
        replay: PointInTime,
        chain: ChainCheck,
        clock: Clock,
        prefetch: Prefetch = _nothing,
    ) -> None:
        self.entries = entries
        self.replay = replay
        self.chain = chain
        self.clock = clock
        self.prefetch = prefetch

    async def scope(
        self,
        actor: Actor,
        selector: ScopeSelector,
        *,
        awareness: datetime | None = None,
        limits: Limits = UNBOUNDED,
        progress: Progress = _quiet,
    ) -> Scope:
        if not allowed(actor, Action.READ, Resource(Kind.ACCESS_LOG)):
            raise Forbidden("only analysts scope a breach")
        if selector.empty:
            raise InvalidValue("name at least one selector", field="selector")
        if selector.since and selector.until and selector.until <= selector.since:
            raise InvalidValue("must be after `from`", field="to")
        work = Work(limits)
        found: list[Entry] = []
        async for entry in self._pages(query(selector), work):
            found.append(entry)
            work.count_entry(len(found))
            if len(found) % PAGE == 0:
                progress("entries", len(found), None)
        progress("entries", len(found), len(found))
        first = await self.entries.ledger_entries(LedgerQuery(limit=1))
        chain = await self._chain(found)
        built = Sorted(selector, found)
        work.count_records(len(built.items))
        await self.prefetch(built.ids())
        records = await self._records(built, work, progress)
        patients = await sm.patients(records, self.replay)
        anomaly = await self._anomaly(selector, found)
        return sm.scope(
            generated_at=self.clock.now(),
            awareness=awareness,
            selector=selector,
            window=_window(selector, found, first[0][1].at if first else None),
            chain=chain,
            records=records,
            patients=patients,
            attempts=built.attempts(),
            anomaly=anomaly,
            entries=found,
        )

    async def _pages(self, q: LedgerQuery, work: Work) -> AsyncIterator[Entry]:
        after = 0
        while True:
            page = await self.entries.ledger_entries(replace(q, after=after, limit=PAGE))
            for entry in page:
                yield entry
            if len(page) < PAGE:
                return
            after = page[-1][0]
            work.check_time()

    async def _chain(self, found: list[Entry]) -> ScopeChain:
        try:
            finding = await self.chain()
        except Unavailable as e:
            return ScopeChain(
                state="unchecked", detail=f"the hash chain could not be verified: {e}"
            )
        if finding is None:
            return ScopeChain(state="intact", detail="hash chain verified from the first entry")
        last = found[-1][0] if found else 0
        return ScopeChain(
            state="tampered",
            finding=ScopeFinding(
                kind=finding.kind, sequence=finding.version, detail=finding.detail
            ),
            affects_scope=finding.version <= last,
            detail=f"entry {finding.version} is {finding.kind}: {finding.detail}",
        )

    async def _records(self, built: Sorted, work: Work, progress: Progress) -> list[ScopeRecord]:
        cache: dict[tuple[Any, ...], dict[str, Any] | None] = {}
        records = []
        total = len(built.items)
        began = time.monotonic()
        for n, (record_id, pairs) in enumerate(built.items.items(), start=1):
            accesses = []
            for sequence, entry, item in pairs:
                key = (entry.resource_type, item, entry.as_of, entry.as_of_tx)
                if key not in cache:
                    cache[key] = await self._values(entry, item)
                accesses.append(access(sequence, entry, item, cache[key]))
            records.append(sm.record(record_id, pairs, accesses))
            if n % 100 == 0 or n == total:
                work.check_time()
                if time.monotonic() - began > 0.5 or n == total:
                    progress("records", n, total)
        return records

    async def _values(self, entry: AccessRecord, item: Disclosure) -> dict[str, Any] | None:
        if not item.fields or entry.as_of <= 0:
            return None  # nothing to rebuild from: an entry written before `as_of` existed
        return await self.replay.values(entry.resource_type, item, entry.as_of, entry.as_of_tx)

    async def _anomaly(self, selector: ScopeSelector, found: list[Entry]) -> ScopeAnomaly:
        if selector.identity:
            whose = identity_of(selector)
            names = [
                *(f"actor:{a}" for a in whose.actor_ids),
                *(f"token:{t}" for t in whose.token_ids),
                *(f"integration:{i}" for i in whose.integration_ids),
            ]
        else:
            actors = {(r.actor_kind, r.actor_id) for _, r in found}
            if len(actors) != 1:
                return no_anomaly(
                    f"{len(actors)} actors in scope: name one (actor, token or integration) "
                    "for its baseline and anomaly start"
                )
            ((kind, actor_id),) = actors
            whose, names = ScopeSelector(actor_ids=(actor_id,)), [f"{kind}:{actor_id}"]
        in_scope = {sequence for sequence, _ in found}
        if selector.since is not None:
            finder = AnomalyFinder("before-window", selector.since, names)
            before = query(
                whose, since=selector.since - timedelta(days=BASELINE_DAYS), until=selector.since
            )
            async for _, record in self._pages(before, Work()):
                finder.before(record)
            for sequence, record in found:
                finder.feed(sequence, record, True)
                if finder.done:
                    break
            return finder.result()
        finder = AnomalyFinder("learned", None, names)
        async for sequence, record in self._pages(query(whose, until=selector.until), Work()):
            finder.feed(sequence, record, sequence in in_scope)
            if finder.done:
                break
        return finder.result()


def _window(selector: ScopeSelector, found: list[Entry], log_start: datetime | None) -> ScopeWindow:
    return ScopeWindow(
        since=selector.since,
        until=selector.until,
        log_start=log_start,
        reaches_before_log=(
            selector.since is None or log_start is None or selector.since < log_start
        ),
        first_sequence=found[0][0] if found else None,
        last_sequence=found[-1][0] if found else None,
    )
