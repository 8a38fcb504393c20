"""Scoping a breach through the service layer, with an in-memory ledger and replay."""

from datetime import timedelta
from uuid import UUID

import pytest

from domain.errors import Forbidden, InvalidValue
from domain.ledger import Finding
from services.actors import Actor, ActorKind
from services.scoping import Limits, ScopeSelector, ScopeTooLarge, ScopingService
from tests.conftest import FakeClock
from tests.unit.scope_fakes import (
    MASKED,
    PATIENT,
    T0,
    FakeChain,
    FakeLedger,
    FakePointInTime,
    item,
    service,
)

ANALYST = Actor(ActorKind.ANALYST, UUID(int=7))


async def test_a_scope_lists_each_record_with_the_values_it_held_when_disclosed():
    ledger = FakeLedger()
    ledger.add(items=[item("ap-1", "pat-1"), item("ap-2", "pat-2")])
    ledger.add(items=[item("ap-1", "pat-1")])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    assert [r.record_id for r in scope.records] == ["ap-1", "ap-2"]
    first = scope.records[0]
    assert [a.sequence for a in first.accesses] == [1, 2]
    # Rebuilt as of each entry's own as_of, not as of now.
    assert first.accesses[0].values == {f: f"ap-1.{f}@10" for f in first.accesses[0].fields}
    assert (first.accesses[1].values or {})["patient_name"] == "ap-1.patient_name@20"
    assert scope.appointments == ("ap-1", "ap-2")
    assert scope.practitioners == ("dr-1",)
    assert scope.summary.accesses == 3


async def test_categories_say_what_was_disclosed_and_explicitly_what_was_not():
    ledger = FakeLedger()
    ledger.add(items=[item("ap-1", "pat-1")])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    disclosed = {c.name: c for c in scope.categories.disclosed}
    assert set(disclosed) == {"identity", "appointment", "identifier"}
    assert disclosed["identity"].fields == ("patient_id", "patient_name")
    assert disclosed["identity"].patients == 1
    assert "contact" in scope.categories.not_disclosed
    assert "no contact details read" in scope.categories.statements
    assert "nothing modified" in scope.categories.statements


async def test_a_change_is_a_modification_and_a_replayed_booking_is_not():
    ledger = FakeLedger()
    ledger.add(action="create", resource="appointment", items=[item("ap-1", "pat-1")])
    ledger.add(action="create", resource="appointment", items=[item("ap-2", "pat-2")], replay=True)
    ledger.add(action="change", resource="patient", items=[item("pat-3", "pat-3", fields=PATIENT)])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    assert scope.categories.modified == ("ap-1", "pat-3")
    assert "nothing modified" not in scope.categories.statements
    assert "no contact details read" not in scope.categories.statements
    assert {r.record_id: r.kind for r in scope.records} == {
        "ap-1": "appointment",
        "ap-2": "appointment",
        "pat-3": "patient",
    }


async def test_a_masked_line_concerns_its_patient_without_identifying_them():
    ledger = FakeLedger()
    ledger.add(items=[item("ap-1", "pat-1", fields=MASKED), item("ap-2", "pat-2")])
    ledger.add(items=[item("ap-3", "pat-1", fields=MASKED, establishment="cab-b")])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    people = {p.patient_id: p for p in scope.patients}
    assert not people["pat-1"].identified and people["pat-2"].identified
    assert people["pat-1"].records == ("ap-1", "ap-3")
    assert people["pat-1"].establishments == ("cab-a", "cab-b")
    assert (scope.summary.patients_identified, scope.summary.patients_concerned_only) == (1, 1)
    by_place = {e.establishment_id: e for e in scope.establishments}
    assert by_place["cab-a"].patients_identified == ("pat-2",)
    assert by_place["cab-a"].patients_concerned_only == ("pat-1",)
    assert by_place["cab-b"].records == ("ap-3",)
    assert "identity" not in {c.name for c in scope.categories.disclosed if c.patients == 2}


async def test_refused_and_not_found_attempts_are_listed_apart_from_disclosures():
    ledger = FakeLedger()
    ledger.add(kind="patient", actor="mallory", items=[item("ap-own", "mallory")])
    for n in range(3):
        ledger.add(kind="patient", actor="mallory", outcome="not-found", record_ids=[f"ap-{n}"])
    ledger.add(kind="patient", actor="mallory", outcome="denied", record_ids=["ap-9"])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(actor_ids=("mallory",)))

    assert [r.record_id for r in scope.records] == ["ap-own"]
    assert [a.record_ids for a in scope.attempts.not_found] == [("ap-0",), ("ap-1",), ("ap-2",)]
    assert [a.record_ids for a in scope.attempts.denied] == [("ap-9",)]
    assert (scope.summary.not_found, scope.summary.denied) == (3, 1)
    assert scope.actors[0].refused == 4 and scope.actors[0].accesses == 1


async def test_a_write_ahead_entry_with_no_ending_is_unsettled():
    ledger = FakeLedger()
    ledger.add(outcome="attempted", action="change", request_id="r-1", record_ids=["ap-1"])
    ledger.add(action="change", request_id="r-1", items=[item("ap-1", "pat-1")])
    ledger.add(outcome="attempted", action="change", request_id="r-2", record_ids=["ap-2"])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    assert [a.request_id for a in scope.attempts.unsettled] == ["r-2"]
    assert scope.summary.entries == 3


async def test_a_window_that_starts_before_the_logs_first_entry_is_flagged():
    ledger = FakeLedger()
    ledger.add(items=[item("ap-1", "pat-1")])
    log_start = ledger.entries[0][1].at
    flagged = await service(ledger).scope(
        ANALYST, ScopeSelector(token_ids=("tok-1",), since=log_start - timedelta(hours=1))
    )
    inside = await service(ledger).scope(
        ANALYST, ScopeSelector(token_ids=("tok-1",), since=log_start)
    )
    unbounded = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    assert flagged.window.reaches_before_log and flagged.window.log_start == log_start
    assert not inside.window.reaches_before_log
    assert unbounded.window.reaches_before_log


async def test_a_tampered_chain_is_reported_and_whether_it_touches_the_scope():
    ledger = FakeLedger()
    ledger.add(items=[item("ap-1", "pat-1")])
    ledger.add(items=[item("ap-2", "pat-2")], token="tok-2")
    early = FakeChain(Finding("altered", 1, "its record does not match its hash"))
    late = FakeChain(Finding("deleted", 2, "missing: 2"))
    selector = ScopeSelector(token_ids=("tok-1",))

    hit = await service(ledger, early).scope(ANALYST, selector)
    after = await service(ledger, late).scope(ANALYST, selector)
    down = await service(ledger, FakeChain(down=True)).scope(ANALYST, selector)
    intact = await service(ledger).scope(ANALYST, selector)

    assert hit.chain.state == "tampered" and hit.chain.affects_scope
    assert hit.chain.finding is not None and hit.chain.finding.sequence == 1
    assert after.chain.state == "tampered" and not after.chain.affects_scope
    assert down.chain.state == "unchecked"
    assert intact.chain.state == "intact"


async def test_the_reverse_every_actor_that_touched_a_patient_and_only_their_records():
    ledger = FakeLedger()
    ledger.add(items=[item("ap-1", "pat-1"), item("ap-2", "pat-2")])
    ledger.add(kind="practitioner", actor="dr-1", token="tok-dr", items=[item("ap-1", "pat-1")])
    ledger.add(kind="patient", actor="pat-2", token="tok-p2", items=[item("ap-2", "pat-2")])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(patient_ids=("pat-1",)))

    assert [r.record_id for r in scope.records] == ["ap-1"]
    assert [(a.actor_kind, a.actor_id) for a in scope.actors] == [
        ("integration", "soft"),
        ("practitioner", "dr-1"),
    ]
    assert scope.anomaly.rule == "none"


async def test_the_contact_details_are_those_of_the_latest_disclosure():
    ledger = FakeLedger()
    ledger.add(items=[item("ap-1", "pat-1")])  # as_of 10
    ledger.add(items=[item("ap-2", "pat-1")])  # as_of 20
    replay = FakePointInTime(
        contacts={
            "pat-1": [
                (5, {"email": "old@example.org"}),
                (15, {"email": "then@example.org"}),
                (25, {"email": "later@example.org"}),
            ]
        }
    )
    scoping = ScopingService(ledger, replay, FakeChain(), FakeClock(T0))
    scope = await scoping.scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    (patient,) = scope.patients
    assert patient.as_of == 20
    assert patient.contact == {"email": "then@example.org"}


async def test_the_same_record_at_the_same_position_is_rebuilt_once():
    ledger = FakeLedger()
    for _ in range(5):
        ledger.add(items=[item("ap-1", "pat-1")], as_of=42)
    replay = FakePointInTime()
    await ScopingService(ledger, replay, FakeChain(), FakeClock(T0)).scope(
        ANALYST, ScopeSelector(token_ids=("tok-1",))
    )
    assert replay.calls == [("agenda", "ap-1", 42, 0)]


async def test_the_timeline_counts_accesses_and_refusals_per_hour():
    ledger = FakeLedger()
    ledger.add(minutes=0, items=[item("ap-1", "pat-1")])
    ledger.add(minutes=10, outcome="not-found", record_ids=["x"])
    ledger.add(minutes=120, items=[item("ap-2", "pat-2")])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    assert scope.timeline.bucket_seconds == 3600
    assert [(h.accesses, h.refused) for h in scope.timeline.buckets] == [(1, 1), (0, 0), (1, 0)]


async def test_only_analysts_and_admins_scope_and_a_scope_needs_a_selector():
    ledger = FakeLedger()
    patient = Actor(ActorKind.PATIENT, UUID(int=1))
    with pytest.raises(Forbidden):
        await service(ledger).scope(patient, ScopeSelector(token_ids=("tok-1",)))
    admin = Actor(ActorKind.ADMIN, UUID(int=0))
    assert (await service(ledger).scope(admin, ScopeSelector(token_ids=("x",)))).records == ()
    with pytest.raises(InvalidValue) as empty:
        await service(ledger).scope(ANALYST, ScopeSelector())
    assert empty.value.field == "selector"
    with pytest.raises(InvalidValue) as backwards:
        await service(ledger).scope(ANALYST, ScopeSelector(since=T0, until=T0 - timedelta(hours=1)))
    assert backwards.value.field == "to"


async def test_a_scope_over_its_bounds_is_refused_with_a_pointer_to_the_cli():
    ledger = FakeLedger()
    for n in range(30):
        ledger.add(items=[item(f"ap-{n}", "pat-1")])
    scoping = service(ledger)
    with pytest.raises(ScopeTooLarge, match="carnet scope"):
        await scoping.scope(
            ANALYST, ScopeSelector(token_ids=("tok-1",)), limits=Limits(max_entries=10)
        )
    with pytest.raises(ScopeTooLarge, match="carnet scope"):
        await scoping.scope(
            ANALYST, ScopeSelector(token_ids=("tok-1",)), limits=Limits(max_records=10)
        )
