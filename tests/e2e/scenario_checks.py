"""What the breach scenario's test asserts, one helper per question.

Each compares something the product produced (ledger entries from
`GET /ledger`, `carnet scope`'s scope.json and notify-*.csv) with the ground
truth the scenario kept from the answers its agents received.
"""

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.scenario_incident import ATTACKER_ADDRESS
from tests.e2e.scenario_truth import Access, Truth
from tests.scenario import USUAL_ADDRESS, Outcome

FIRST_REQUESTS = 3  # the anomaly start must be one of the actor's first requests


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def worth_scoping(outcome: Outcome) -> None:
    """The story proves something only if each thing to tell apart is there."""
    attacker, legit, enumerator = outcome.attacker, outcome.legit, outcome.enumerator
    assert len(attacker.records) > 50 and attacker.identified and attacker.concerned_only
    assert len(attacker.establishments) >= 3 and attacker.attempts
    assert legit.records - attacker.records, "some records only the real software saw"
    assert {c.client_ip for c in attacker.requests} == {ATTACKER_ADDRESS}
    assert {c.client_ip for c in legit.requests} == {USUAL_ADDRESS}
    assert enumerator.records and {a.status for a in enumerator.attempts} == {404, 429, 401}
    assert outcome.changed and outcome.contacts_now


def _by_request(truth: Truth) -> dict[str, list[Access]]:
    found: dict[str, list[Access]] = {}
    for accesses in truth.accesses.values():
        for access in accesses:
            found.setdefault(access.request_id, []).append(access)
    return found


def entries_agree(entries: list[dict[str, Any]], truth: Truth, outcome: Outcome) -> None:
    """One entry per request, naming what its answer held, and where and when it came from."""
    registry = outcome.cast.registry
    by_request = {e["request_id"]: e for e in entries}
    assert len(by_request) == len(entries)
    assert set(by_request) == {c.request_id for c in truth.requests}
    attempts = {a.request_id: a for a in truth.attempts}
    disclosed = _by_request(truth)
    for call in truth.requests:
        entry = by_request[call.request_id]
        assert (entry["client_ip"], entry["user_agent"]) == (call.client_ip, call.user_agent)
        assert at(entry["at"]) == call.at
        # What was asked for is kept even when nothing came back (an empty day).
        asked = {tuple(pair) for pair in entry["selectors"]}
        assert {(k, v) for k, v in call.params} <= asked, (entry, call)
        if call.request_id in attempts:
            attempt = attempts[call.request_id]
            assert (entry["outcome"], entry["record_ids"]) == (attempt.outcome, [attempt.asked_for])
            assert entry["items"] == []
            continue
        assert entry["outcome"] == "allowed"
        want = []
        for access in disclosed.get(call.request_id, []):
            booking = registry.appointments[access.record_id]
            want.append(
                (
                    access.record_id,
                    booking.patient_id,
                    access.identified,
                    booking.practitioner_id,
                    booking.establishment_id,
                    sorted(access.values),
                )
            )
        got = [
            (
                i["record_id"],
                i["patient_id"],
                i["identified"],
                i["practitioner_id"],
                i["establishment_id"],
                sorted(i["fields"]),
            )
            for i in entry["items"]
        ]
        assert sorted(got) == sorted(want), call


def _patients_at(truth: Truth, outcome: Outcome, establishment: str) -> set[str]:
    registry = outcome.cast.registry
    return {
        registry.appointments[r].patient_id
        for r in truth.records
        if registry.appointments[r].establishment_id == establishment
    }


def scope_matches(scope: dict[str, Any], truth: Truth, outcome: Outcome, address: str) -> None:
    """The scope is exactly what the answers held: no more, no less, value for value."""
    registry = outcome.cast.registry
    assert scope["chain"]["state"] == "intact"
    records = {r["record_id"]: r for r in scope["records"]}
    assert set(records) == truth.records
    for record_id, accesses in truth.accesses.items():
        record, booking = records[record_id], registry.appointments[record_id]
        assert (record["patient_id"], record["practitioner_id"], record["establishment_id"]) == (
            booking.patient_id,
            booking.practitioner_id,
            booking.establishment_id,
        )
        assert record["identified"] == any(a.identified for a in accesses)
        # Each access, in order: which request, when, identified or not, and
        # the values exactly as the answer carried them.
        got = [
            (a["request_id"], at(a["at"]), a["identified"], a["values"]) for a in record["accesses"]
        ]
        want = [(a.request_id, a.at, a.identified, a.values) for a in accesses]
        assert got == want, record_id

    patients = {p["patient_id"]: p for p in scope["patients"]}
    assert set(patients) == truth.patients
    assert {p for p, v in patients.items() if v["identified"]} == truth.identified
    assert set(scope["practitioners"]) == truth.practitioners
    places = {e["establishment_id"]: e for e in scope["establishments"]}
    assert set(places) == truth.establishments
    for establishment, place in places.items():
        theirs = _patients_at(truth, outcome, establishment)
        assert set(place["patients_identified"]) == theirs & truth.identified
        assert set(place["patients_concerned_only"]) == theirs - truth.identified

    # Attempts apart: each refused request with the id it asked for, and
    # nothing asked for and not got counted as disclosed.
    attempts = scope["attempts"]
    assert attempts["unsettled"] == []
    tried = [
        (a["request_id"], a["outcome"], tuple(a["record_ids"]))
        for a in attempts["not_found"] + attempts["denied"]
    ]
    assert sorted(tried) == sorted(
        (a.request_id, a.outcome, (a.asked_for,)) for a in truth.attempts
    )
    got_ids = {a.record_id for accesses in truth.accesses.values() for a in accesses}
    assert ({a.asked_for for a in truth.attempts} - got_ids).isdisjoint(records)

    # The anomaly starts with one of the actor's first requests, from its address.
    start = scope["anomaly"]["start"]
    assert start is not None, scope["anomaly"]
    assert start["client_ip"] == address
    assert at(start["at"]) in [c.at for c in truth.requests[:FIRST_REQUESTS]], start


def notify_lists_agree(folder: Path, truth: Truth, outcome: Outcome) -> None:
    """One list per establishment: its patients, with the contact details they had then."""
    for establishment in truth.establishments:
        with (folder / f"notify-{establishment}.csv").open(newline="") as f:
            rows = {row["patient_id"]: row for row in csv.DictReader(f)}
        assert set(rows) == _patients_at(truth, outcome, establishment)
        for patient, row in rows.items():
            assert row["identified"].startswith("yes") == (patient in truth.identified)
            # A phone "+33 …" is written "'+33 …", so that no spreadsheet runs it.
            then = (row["email"], row["phone"].removeprefix("'"))
            assert then == outcome.contacts_then[patient], patient
            name = f"{row['first_name']} {row['last_name']}"
            assert name == outcome.cast.registry.names[patient]
    assert outcome.contacts_now.keys() & truth.patients, "some have new details since"


def changed_since(truth: Truth, outcome: Outcome) -> list[str]:
    """Records whose last disclosed values differ from what they hold today."""
    return [
        record
        for record, now in outcome.changed.items()
        if record in truth.accesses
        and any(
            k in now and now[k] != v
            for k, v in truth.accesses[record][-1].values.items()
            if k in ("status", "replaced_by", "cancellation_reason")
        )
    ]
