"""The entries of a scope sorted into disclosures and attempts, and the bounds on the work."""

import time
from dataclasses import dataclass
from typing import Any

from domain.errors import RuleViolation
from domain.ledger import AccessRecord, Disclosure
from services.scoping.model import ScopeAccess, ScopeAttempt, ScopeAttempts, ScopeSelector

Entry = tuple[int, AccessRecord]


class ScopeTooLarge(RuleViolation):
    """More than this caller may scope at once (the HTTP API's bound): use `carnet scope`."""

    code = "scope-too-large"


@dataclass(frozen=True)
class Limits:
    max_entries: int | None = None
    max_records: int | None = None
    seconds: float | None = None  # of work, checked between pages and records


UNBOUNDED = Limits()


def access(
    sequence: int, entry: AccessRecord, item: Disclosure, values: dict[str, Any] | None
) -> ScopeAccess:
    return ScopeAccess(
        sequence=sequence,
        at=entry.at,
        actor_kind=entry.actor_kind,
        actor_id=entry.actor_id,
        token_id=entry.token_id,
        action=entry.action,
        outcome=entry.outcome,
        resource_type=entry.resource_type,
        request_id=entry.request_id,
        client_ip=entry.client_ip,
        user_agent=entry.user_agent,
        fields=item.fields,
        identified=item.identified,
        replay=entry.replay,
        as_of=entry.as_of,
        as_of_tx=entry.as_of_tx,
        values=values,
    )


class Work:
    """The caller's bounds on a scope; past one, ScopeTooLarge."""

    def __init__(self, limits: Limits = UNBOUNDED) -> None:
        self.limits = limits
        self.began = time.monotonic()

    def count_entry(self, n: int) -> None:
        if self.limits.max_entries is not None and n > self.limits.max_entries:
            raise ScopeTooLarge(
                f"more than {self.limits.max_entries} ledger entries match: narrow the "
                "selector, or run `carnet scope`",
                field="selector",
            )

    def count_records(self, n: int) -> None:
        if self.limits.max_records is not None and n > self.limits.max_records:
            raise ScopeTooLarge(
                f"{n} records were disclosed, more than {self.limits.max_records}: "
                "run `carnet scope` for this one",
                field="selector",
            )

    def check_time(self) -> None:
        seconds = self.limits.seconds
        if seconds is not None and time.monotonic() - self.began > seconds:
            raise ScopeTooLarge(
                f"this scope takes more than {seconds:g} s: run `carnet scope`", field="selector"
            )


class Sorted:
    """The entries in scope, sorted into disclosures (per record) and attempts."""

    def __init__(self, selector: ScopeSelector, found: list[Entry]) -> None:
        self.items: dict[str, list[tuple[int, AccessRecord, Disclosure]]] = {}
        self._refused: list[Entry] = []
        self._ahead: list[Entry] = []
        settled: set[str] = set()
        for sequence, entry in found:
            if entry.outcome == "attempted":
                self._ahead.append((sequence, entry))
                continue
            settled.add(entry.request_id)
            if entry.outcome != "allowed":
                self._refused.append((sequence, entry))
                continue
            for item in entry.disclosures():
                if names(selector, item):
                    self.items.setdefault(item.record_id, []).append((sequence, entry, item))
        self._unsettled = [(s, e) for s, e in self._ahead if e.request_id not in settled]

    def ids(self) -> list[str]:
        """Every record and patient disclosed: what the values will be rebuilt from."""
        patients = {i.patient_id for pairs in self.items.values() for _, _, i in pairs}
        return [*self.items, *sorted(p for p in patients if p and p not in self.items)]

    def attempts(self) -> ScopeAttempts:
        def of(outcome: str) -> tuple[ScopeAttempt, ...]:
            return tuple(attempt(s, e) for s, e in self._refused if e.outcome == outcome)

        return ScopeAttempts(
            denied=of("denied"),
            not_found=of("not-found"),
            refused=of("refused"),
            unsettled=tuple(attempt(s, e) for s, e in self._unsettled),
        )


def names(selector: ScopeSelector, item: Disclosure) -> bool:
    """A disclosure the record selectors keep (all of them, when none is given)."""
    return (
        (not selector.patient_ids or item.patient_id in selector.patient_ids)
        and (not selector.establishment_ids or item.establishment_id in selector.establishment_ids)
        and (not selector.practitioner_ids or item.practitioner_id in selector.practitioner_ids)
        and (not selector.record_ids or item.record_id in selector.record_ids)
    )


def attempt(sequence: int, e: AccessRecord) -> ScopeAttempt:
    return ScopeAttempt(
        sequence=sequence,
        at=e.at,
        actor_kind=e.actor_kind,
        actor_id=e.actor_id,
        token_id=e.token_id,
        action=e.action,
        resource_type=e.resource_type,
        outcome=e.outcome,
        request_id=e.request_id,
        client_ip=e.client_ip,
        user_agent=e.user_agent,
        record_ids=e.record_ids,
        patient_ids=e.patient_ids,
        selectors=e.selectors,
    )
