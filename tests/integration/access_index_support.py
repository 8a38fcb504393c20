"""A random but reproducible ledger and a brute-force oracle for the access index's tests:
what a scan of the chain finds for a LedgerQuery, restated from the records themselves
(not from the projection's code)."""

import random
from datetime import timedelta

from domain.ledger import AccessRecord, Disclosure
from services.ports import LedgerQuery
from tests.conftest import T0

TOKENS = ["tok-a", "tok-b", "tok-c", "tok-d"]
ACTORS = {"tok-a": "int-1", "tok-b": "int-1", "tok-c": "pat-1", "tok-d": "prac-1"}
IPS = ["10.0.0.1", "10.0.0.2", "192.0.2.66"]
AGENTS = ["MediAgenda/4.2 (Linux, x64)", "curl/8.0", "Mozilla/5.0 \\x1b[31m"]
PATIENTS = [f"patient-{n}" for n in range(6)]
RECORDS = [f"appt-{n}" for n in range(12)]
GHOSTS = [f"random-{n}" for n in range(30)]  # ids an enumerating actor tries: never disclosed
PRACTITIONERS = ["prac-1", "prac-2", "prac-3"]
ESTABLISHMENTS = ["est-1", "est-2"]


def random_record(rng: random.Random, n: int) -> AccessRecord:
    token = rng.choice(TOKENS)
    actor = ACTORS[token]
    outcome = rng.choice(["allowed"] * 5 + ["denied", "not-found", "attempted"])
    kind = rng.choice(["items", "items", "legacy", "agenda-selector"])
    items: tuple[Disclosure, ...] = ()
    record_ids: tuple[str, ...] = ()
    patient_ids: tuple[str, ...] = ()
    selectors: tuple[tuple[str, str], ...] = ()
    if outcome != "allowed":
        record_ids = (rng.choice(RECORDS + GHOSTS),)
        if rng.random() < 0.3:
            patient_ids = (rng.choice(PATIENTS),)
    elif kind == "items":
        items = tuple(
            Disclosure(
                record_id=rng.choice(RECORDS),
                patient_id=rng.choice([*PATIENTS, None]),
                identified=rng.random() < 0.5,
                practitioner_id=rng.choice(PRACTITIONERS),
                establishment_id=rng.choice(ESTABLISHMENTS),
                fields=("start", "patient_name"),
            )
            for _ in range(rng.randrange(1, 4))
        )
        record_ids = tuple(dict.fromkeys(i.record_id for i in items))
        patient_ids = tuple(dict.fromkeys(i.patient_id for i in items if i.patient_id))
    elif kind == "legacy":  # as written before items existed
        record_ids = tuple(rng.sample(RECORDS, rng.randrange(1, 3)))
        patient_ids = tuple(rng.sample(PATIENTS, rng.randrange(0, 3)))
    if kind == "agenda-selector":  # an agenda read or refusal of an empty day
        selectors = (("date", "2026-12-02"), ("practitioner_id", rng.choice(PRACTITIONERS)))
    return AccessRecord(
        actor_kind="integration" if actor.startswith("int") else "patient",
        actor_id=actor,
        token_id=token if rng.random() < 0.9 else None,
        integration_id=actor if actor.startswith("int") else None,
        action=rng.choice(["read", "search", "change"]),
        resource_type=rng.choice(["appointment", "agenda", "patient"]),
        record_ids=record_ids,
        patient_ids=patient_ids,
        fields=("start", "patient_name") if outcome == "allowed" else (),
        items=items,
        selectors=selectors,
        replay=rng.random() < 0.1,
        outcome=outcome,  # type: ignore[arg-type]
        # Not in sequence order: entry times may run behind each other.
        at=T0 + timedelta(hours=n * 0.5 + rng.uniform(-2, 2)),
        request_id=f"req-{n}",
        client_ip=rng.choice(IPS),
        user_agent=rng.choice(AGENTS),
        as_of=n,
    )


def names(record: AccessRecord) -> dict[str, set[str]]:
    """What an entry names, restated from the record (not from the projection's code)."""
    selected = dict(record.selectors)
    practitioners = {i.practitioner_id for i in record.items if i.practitioner_id}
    establishments = {i.establishment_id for i in record.items if i.establishment_id}
    return {
        "record_ids": set(record.record_ids) | {i.record_id for i in record.items},
        "patient_ids": set(record.patient_ids)
        | {i.patient_id for i in record.items if i.patient_id},
        "practitioner_ids": practitioners
        or ({selected["practitioner_id"]} if "practitioner_id" in selected else set()),
        "establishment_ids": establishments,
    }


def matches(q: LedgerQuery, r: AccessRecord) -> bool:
    who = {
        "actor_ids": r.actor_id,
        "token_ids": r.token_id,
        "integration_ids": r.integration_id,
        "client_ips": r.client_ip,
        "user_agents": r.user_agent,
    }
    for name, value in who.items():
        if getattr(q, name) and value not in getattr(q, name):
            return False
        if value is not None and value in getattr(q, f"not_{name}"):
            return False
    what = {"outcomes": r.outcome, "actions": r.action, "resource_types": r.resource_type}
    if any(getattr(q, n) and v not in getattr(q, n) for n, v in what.items()):
        return False
    named = names(r)
    if any(getattr(q, n) and not getattr(q, n) & named[n] for n in named):
        return False
    return (q.since is None or r.at >= q.since) and (q.until is None or r.at < q.until)


def random_query(rng: random.Random) -> LedgerQuery:
    pools = {
        "actor_ids": list(set(ACTORS.values())),
        "token_ids": TOKENS,
        "integration_ids": ["int-1"],
        "client_ips": IPS,
        "user_agents": AGENTS,
        "patient_ids": PATIENTS,
        "record_ids": RECORDS,
        "practitioner_ids": PRACTITIONERS,
        "establishment_ids": ESTABLISHMENTS,
        "outcomes": ["allowed", "denied", "not-found", "attempted"],
        "actions": ["read", "search", "change"],
        "resource_types": ["appointment", "agenda", "patient"],
    }
    chosen: dict[str, object] = {}
    for name in rng.sample(sorted(pools), rng.randrange(1, 4)):
        values = frozenset(rng.sample(pools[name], min(len(pools[name]), rng.randrange(1, 3))))
        negatable = f"not_{name}" in LedgerQuery.__dataclass_fields__
        chosen[f"not_{name}" if negatable and rng.random() < 0.35 else name] = values
    if rng.random() < 0.5:
        start = T0 + timedelta(hours=rng.uniform(-3, 100))
        chosen["since"] = start
        chosen["until"] = start + timedelta(hours=rng.uniform(1, 60))
    return LedgerQuery(**chosen, limit=10_000)  # type: ignore[arg-type]
