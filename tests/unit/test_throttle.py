"""Admission at the service edge, against the in-memory fake: one look-up both
authenticates and charges the token; unusable tokens pay; unknown ones do not."""

from datetime import UTC, datetime, timedelta

from services.actors import ActorKind
from services.credentials import CredentialService
from services.ports import RateLimit
from tests.unit.admission_fakes import FakeAdmission
from tests.unit.fakes import FakeRepository, FakeTokenStore
from tests.world import META, ROOT

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
LIMIT = RateLimit(rate_per_second=2, burst=3)


class Clock:
    def __init__(self) -> None:
        self.at = 0.0
        self.wall = T0

    def now(self) -> datetime:
        return self.wall

    def __call__(self) -> float:
        return self.at


def service() -> tuple[CredentialService, Clock]:
    clock = Clock()
    repo = FakeRepository()
    tokens = FakeTokenStore(repo)
    return CredentialService(repo, clock, tokens, FakeAdmission(tokens, clock)), clock


async def test_an_active_token_is_admitted_until_its_burst_then_waits_for_the_refill():
    credentials, clock = service()
    issued = await credentials.issue_token(ROOT, META, ActorKind.ANALYST, label="a")
    answers = [await credentials.admit(issued.secret, LIMIT) for _ in range(4)]
    assert [a.actor == issued.actor for a in answers] == [True] * 4
    assert [a.wait for a in answers] == [0, 0, 0, 0.5]  # one unit at 2/s
    clock.at += 0.5
    assert (await credentials.admit(issued.secret, LIMIT)).wait == 0


async def test_an_unknown_or_malformed_secret_names_nobody_and_charges_nothing():
    credentials, _ = service()
    for secret in ("carnet_nope", "", "x" * 512):
        admitted = await credentials.admit(secret, LIMIT)
        assert (admitted.actor, admitted.holder, admitted.wait) == (None, None, 0.0)


async def test_a_suspended_or_expired_token_names_its_holder_and_still_pays():
    credentials, clock = service()
    suspended = await credentials.issue_token(ROOT, META, ActorKind.ANALYST, label="s")
    expiring = await credentials.issue_token(ROOT, META, ActorKind.ANALYST, label="e", valid_days=1)
    assert suspended.actor.token_id is not None
    await credentials.suspend_token(META, suspended.actor.token_id, "test")
    clock.wall = T0 + timedelta(days=2)
    for issued in (suspended, expiring):
        answers = [await credentials.admit(issued.secret, LIMIT) for _ in range(4)]
        assert all(a.actor is None and a.holder == issued.actor for a in answers)
        assert [a.wait > 0 for a in answers] == [False, False, False, True]


async def test_someone_elses_misses_are_not_yours():
    credentials, _ = service()
    mine = await credentials.issue_token(ROOT, META, ActorKind.ANALYST, label="m")
    theirs = await credentials.issue_token(ROOT, META, ActorKind.ANALYST, label="t")
    assert mine.actor.token_id and theirs.actor.token_id
    assert [await credentials.count_miss(theirs.actor.token_id, 3, 60) for _ in range(2)] == [
        None,
        None,
    ]
    assert await credentials.count_miss(mine.actor.token_id, 3, 60) is None
    assert await credentials.count_miss(theirs.actor.token_id, 3, 60) == 3


async def test_misses_spread_wider_than_the_window_never_cross():
    credentials, clock = service()
    issued = await credentials.issue_token(ROOT, META, ActorKind.ANALYST, label="w")
    assert issued.actor.token_id
    for _ in range(10):
        assert await credentials.count_miss(issued.actor.token_id, 3, 60) is None
        clock.at += 31  # two misses per window at most
