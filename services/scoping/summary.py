"""From the sorted entries to the parts of a Scope: records, patients, categories, actors."""

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.ledger import AccessRecord, Disclosure
from services.ports import PointInTime
from services.scoping import categories as cat
from services.scoping.model import (
    Scope,
    ScopeAccess,
    ScopeActor,
    ScopeAnomaly,
    ScopeAttempts,
    ScopeCategories,
    ScopeCategory,
    ScopeChain,
    ScopeEstablishment,
    ScopeHour,
    ScopePatient,
    ScopeRecord,
    ScopeSelector,
    ScopeSummary,
    ScopeTimeline,
    ScopeWindow,
)

WRITES = frozenset({"create", "change", "delete"})
REFUSED = frozenset({"denied", "not-found", "refused"})
# Over a longer span the timeline counts per day, so that it stays readable.
HOURLY_SPAN = timedelta(days=14)


def _first(values: Sequence[str | None]) -> str | None:
    return next((v for v in values if v), None)


def record(
    record_id: str, pairs: list[tuple[int, AccessRecord, Disclosure]], accesses: list[ScopeAccess]
) -> ScopeRecord:
    items = [item for _, _, item in pairs]
    resource = pairs[0][1].resource_type
    if any(i.patient_id == record_id for i in items):
        kind = "patient"
    elif resource in ("appointment", "agenda"):
        kind = "appointment"
    else:
        kind = resource
    return ScopeRecord(
        record_id=record_id,
        kind=kind,
        patient_id=_first([i.patient_id for i in items]),
        identified=any(i.identified for i in items),
        practitioner_id=_first([i.practitioner_id for i in items]),
        establishment_id=_first([i.establishment_id for i in items]),
        first_at=min(a.at for a in accesses),
        last_at=max(a.at for a in accesses),
        accesses=tuple(accesses),
    )


async def patients(records: list[ScopeRecord], replay: PointInTime) -> list[ScopePatient]:
    """Each patient concerned, with the identity and contact details they had then."""
    mine: dict[str, list[ScopeRecord]] = defaultdict(list)
    for r in records:
        if r.patient_id:
            mine[r.patient_id].append(r)
    found = []
    for patient_id, theirs in mine.items():
        accesses = [a for r in theirs for a in r.accesses]
        as_of = max(a.as_of for a in accesses)
        contact = await replay.contact(patient_id, as_of) if as_of > 0 else None
        found.append(
            ScopePatient(
                patient_id=patient_id,
                identified=any(r.identified for r in theirs),
                records=tuple(r.record_id for r in theirs),
                establishments=tuple(sorted({r.establishment_id or "" for r in theirs})),
                categories=tuple(cat.categories_of({f for a in accesses for f in a.fields})),
                first_at=min(r.first_at for r in theirs),
                last_at=max(r.last_at for r in theirs),
                as_of=as_of,
                contact=contact,
            )
        )
    return sorted(found, key=lambda p: (p.first_at, p.patient_id))


def establishments(
    records: list[ScopeRecord], people: list[ScopePatient]
) -> list[ScopeEstablishment]:
    named = {p.patient_id: p.identified for p in people}
    by: dict[str, list[ScopeRecord]] = defaultdict(list)
    for r in records:
        by[r.establishment_id or ""].append(r)
    found = []
    for establishment_id, theirs in sorted(by.items()):
        ids = sorted({r.patient_id for r in theirs if r.patient_id})
        found.append(
            ScopeEstablishment(
                establishment_id=establishment_id,
                patients_identified=tuple(p for p in ids if named[p]),
                patients_concerned_only=tuple(p for p in ids if not named[p]),
                records=tuple(r.record_id for r in theirs),
            )
        )
    return found


def categories(records: list[ScopeRecord]) -> ScopeCategories:
    fields: dict[str, set[str]] = defaultdict(set)
    reach: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    modified = []
    for r in records:
        for a in r.accesses:
            for f in a.fields:
                name = cat.category_of(f)
                fields[name].add(f)
                reach[name][0].add(r.record_id)
                if r.patient_id:
                    reach[name][1].add(r.patient_id)
        if any(a.action in WRITES and not a.replay for a in r.accesses):
            modified.append(r.record_id)
    disclosed = cat.categories_of({f for fs in fields.values() for f in fs})
    return ScopeCategories(
        disclosed=tuple(
            ScopeCategory(
                name=name,
                label=cat.LABELS[name],
                fields=tuple(sorted(fields[name])),
                records=len(reach[name][0]),
                patients=len(reach[name][1]),
            )
            for name in disclosed
        ),
        not_disclosed=tuple(cat.not_disclosed(disclosed)),
        modified=tuple(modified),
        statements=tuple(cat.statements(disclosed, bool(modified))),
    )


def actors(entries: list[tuple[int, AccessRecord]], records: list[ScopeRecord]) -> list[ScopeActor]:
    by: dict[tuple[str, str], list[AccessRecord]] = defaultdict(list)
    for _, e in entries:
        by[e.actor_kind, e.actor_id].append(e)
    reached: dict[tuple[str, str], tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for r in records:
        for a in r.accesses:
            reached[a.actor_kind, a.actor_id][0].add(r.record_id)
            if r.patient_id:
                reached[a.actor_kind, a.actor_id][1].add(r.patient_id)
    found = []
    for (kind, actor_id), theirs in by.items():
        settled = [e for e in theirs if e.outcome != "attempted"]
        seen_records, seen_patients = reached[kind, actor_id]
        found.append(
            ScopeActor(
                actor_kind=kind,
                actor_id=actor_id,
                token_ids=tuple(sorted({e.token_id for e in theirs if e.token_id})),
                integration_id=_first([e.integration_id for e in theirs]),
                client_ips=tuple(sorted({e.client_ip for e in theirs})),
                user_agents=tuple(sorted({e.user_agent for e in theirs})),
                entries=len(theirs),
                accesses=sum(e.outcome == "allowed" for e in settled),
                refused=sum(e.outcome in REFUSED for e in settled),
                records=tuple(sorted(seen_records)),
                patients=tuple(sorted(seen_patients)),
                first_at=min(e.at for e in theirs),
                last_at=max(e.at for e in theirs),
            )
        )
    return sorted(found, key=lambda a: (a.first_at, a.actor_kind, a.actor_id))


def _floor(at: datetime, seconds: int) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + timedelta(seconds=(at - epoch) // timedelta(seconds=seconds) * seconds)


def timeline(entries: list[tuple[int, AccessRecord]], anomaly: ScopeAnomaly) -> ScopeTimeline:
    settled = [e for _, e in entries if e.outcome != "attempted"]
    base = anomaly.baseline
    if not settled:
        return ScopeTimeline(bucket_seconds=3600, baseline_peak=0, baseline_mean=0.0, buckets=())
    first, last = min(e.at for e in settled), max(e.at for e in settled)
    hourly = last - first <= HOURLY_SPAN
    size = 3600 if hourly else 86400
    counts: dict[datetime, list[int]] = {}
    start = _floor(first, size)
    while start <= last:
        counts[start] = [0, 0]
        start += timedelta(seconds=size)
    for e in settled:
        counts[_floor(e.at, size)][e.outcome in REFUSED] += 1
    mean = base.mean_per_hour * size / 3600 if base else 0.0
    return ScopeTimeline(
        bucket_seconds=size,
        baseline_peak=(base.peak_per_hour if base and hourly else 0),
        baseline_mean=round(mean, 2),
        buckets=tuple(ScopeHour(start=h, accesses=a, refused=r) for h, (a, r) in counts.items()),
    )


def scope(
    *,
    generated_at: datetime,
    awareness: datetime | None,
    selector: ScopeSelector,
    window: ScopeWindow,
    chain: ScopeChain,
    records: list[ScopeRecord],
    patients: list[ScopePatient],
    attempts: ScopeAttempts,
    anomaly: ScopeAnomaly,
    entries: list[tuple[int, AccessRecord]],
) -> Scope:
    places = establishments(records, patients)
    kinds = categories(records)
    who = actors(entries, records)
    appointments = tuple(r.record_id for r in records if r.kind == "appointment")
    practitioners = tuple(sorted({r.practitioner_id for r in records if r.practitioner_id}))
    counted: dict[str, Any] = {
        "entries": len(entries),
        "accesses": sum(len(r.accesses) for r in records),
        "records": len(records),
        "appointments": len(appointments),
        "patients_identified": sum(p.identified for p in patients),
        "patients_concerned_only": sum(not p.identified for p in patients),
        "practitioners": len(practitioners),
        "establishments": len([e for e in places if e.establishment_id]),
        "modified": len(kinds.modified),
        "denied": len(attempts.denied),
        "not_found": len(attempts.not_found),
        "unsettled": len(attempts.unsettled),
        "refused": len(attempts.refused),
        "actors": len(who),
    }
    return Scope(
        generated_at=generated_at,
        awareness=awareness,
        selector=selector,
        window=window,
        chain=chain,
        summary=ScopeSummary(**counted),
        records=tuple(records),
        patients=tuple(patients),
        appointments=appointments,
        practitioners=practitioners,
        establishments=tuple(places),
        categories=kinds,
        attempts=attempts,
        anomaly=anomaly,
        actors=tuple(who),
        timeline=timeline(entries, anomaly),
    )
