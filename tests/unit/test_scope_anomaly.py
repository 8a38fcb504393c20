"""The anomaly start: an actor's baseline, and the first access in scope that leaves it."""

from datetime import timedelta
from uuid import UUID

from services.actors import Actor, ActorKind
from services.scoping import ScopeSelector
from tests.unit.scope_fakes import ATTACKER, T0, FakeLedger, item, service, stolen_token

ANALYST = Actor(ActorKind.ANALYST, UUID(int=7))


async def test_the_anomaly_start_is_the_first_access_unlike_the_window_before_it():
    ledger = FakeLedger()
    first = stolen_token(ledger)
    attack_began = ledger.entries[first - 1][1].at
    since = attack_began - timedelta(minutes=5)
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",), since=since))

    anomaly = scope.anomaly
    assert anomaly.rule == "before-window"
    assert anomaly.baseline is not None
    assert anomaly.baseline.client_ips == ("10.0.0.1",)
    assert anomaly.baseline.peak_per_hour == 1
    assert anomaly.start is not None and anomaly.start.sequence == first
    reasons = {d.reason for d in anomaly.start.reasons}
    assert reasons == {"address", "user-agent", "practitioners"}


async def test_without_a_window_start_the_baseline_is_learned_up_to_the_first_departure():
    ledger = FakeLedger()
    first = stolen_token(ledger)
    # The analyst already set the usual address aside; the attack is all that is left.
    selector = ScopeSelector(token_ids=("tok-1",), not_client_ips=("10.0.0.1",))
    scope = await service(ledger).scope(ANALYST, selector)

    assert scope.anomaly.rule == "learned"
    assert scope.anomaly.start is not None and scope.anomaly.start.sequence == first
    assert scope.anomaly.baseline is not None
    assert scope.anomaly.baseline.entries == first - 1  # every entry before it
    assert all(a.client_ip == ATTACKER["ip"] for r in scope.records for a in r.accesses)
    assert len(scope.records) == 31


async def test_the_same_address_at_a_rate_far_above_the_baseline_departs_on_rate():
    ledger = FakeLedger()
    for n in range(48):
        ledger.add(minutes=60, items=[item(f"ap-{n % 3}", "pat-1")])
    since = ledger.clock + timedelta(minutes=30)
    ledger.add(minutes=60)
    for n in range(40):
        ledger.add(minutes=0.5, items=[item(f"ap-{200 + n}", f"pat-{n}")])
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",), since=since))

    assert scope.anomaly.start is not None
    reasons = {d.reason for d in scope.anomaly.start.reasons}
    assert "rate" in reasons and "address" not in reasons
    # Twice the peak (1/h) and 10 more: the 12th entry in the hour (49, then 50..60) departs.
    assert scope.anomaly.start.sequence == 60


async def test_an_actor_with_no_history_before_the_window_has_no_baseline():
    ledger = FakeLedger()
    ledger.add(kind="patient", actor="new", outcome="not-found", record_ids=["ap-1"])
    scope = await service(ledger).scope(
        ANALYST, ScopeSelector(actor_ids=("new",), since=T0 - timedelta(days=1))
    )
    assert scope.anomaly.baseline is None
    assert scope.anomaly.start is not None
    assert [d.reason for d in scope.anomaly.start.reasons] == ["no-baseline"]


async def test_a_scope_of_all_of_a_tokens_entries_learns_its_first_day():
    ledger = FakeLedger()
    first = stolen_token(ledger)
    scope = await service(ledger).scope(ANALYST, ScopeSelector(token_ids=("tok-1",)))

    assert scope.anomaly.rule == "learned"
    assert scope.anomaly.start is not None and scope.anomaly.start.sequence == first
    assert scope.anomaly.baseline is not None
    assert scope.anomaly.baseline.client_ips == ("10.0.0.1",)
    # Everything the token did is in scope, the software's syncs too.
    assert {a.client_ip for r in scope.records for a in r.accesses} == {
        "10.0.0.1",
        ATTACKER["ip"],
    }


async def test_an_actor_hostile_from_its_first_access_is_learned_as_it_is():
    ledger = FakeLedger()
    for n in range(10):
        ledger.add(
            minutes=1, kind="patient", actor="mallory", outcome="not-found", record_ids=[f"x{n}"]
        )
    scope = await service(ledger).scope(ANALYST, ScopeSelector(actor_ids=("mallory",)))
    assert scope.anomaly.start is None
    assert "give the window a start" in scope.anomaly.note
