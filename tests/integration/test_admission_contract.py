"""The admission port, one contract for the in-memory fake and PostgreSQL: a
token's look-up and the take from its bucket are one step, the state is read
fresh, the budget is exact under concurrency, and crossing the enumeration
limit is reported once per crossing however many callers cross together."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import uuid4

import asyncpg
import pytest

from domain.credentials import Token
from infra.admission import BUCKETS, WINDOWS, PostgresAdmission
from infra.eventstore import EventStore
from infra.repository import PostgresRepository
from infra.tokens import PostgresTokenStore
from services.credentials import hash_token
from services.ports import Admission, Metadata, RateLimit, TokenStore
from tests.unit.admission_fakes import FakeAdmission
from tests.unit.fakes import FakeRepository, FakeTokenStore

META = Metadata(actor_kind="admin", actor_id="contract")
NO_REFILL = RateLimit(rate_per_second=0.001, burst=3)


@dataclass
class Pair:
    admission: Admission
    tokens: TokenStore


@pytest.fixture(params=["fake", "postgres"])
async def pair(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> AsyncIterator[Pair]:
    if request.param == "fake":
        tokens = FakeTokenStore(FakeRepository())
        yield Pair(FakeAdmission(tokens), tokens)
        return
    repo = PostgresRepository(EventStore(pool))
    yield Pair(PostgresAdmission(pool), PostgresTokenStore(repo.store, repo.mapper))


async def issued(tokens: TokenStore) -> tuple[Token, bytes]:
    secret = secrets.token_hex(16)
    token = Token(
        token_hash=hash_token(secret).hex(),
        actor_kind="patient",
        actor_id=uuid4(),
        establishment_id=None,
        display_name="patient",
        expires_at=None,
    )
    await tokens.save(token, META)
    return token, hash_token(secret)


async def test_an_unknown_hash_names_no_token_and_has_no_budget(pair: Pair):
    for _ in range(5):
        admitted = await pair.admission.admit(hash_token("nobody"), NO_REFILL)
        assert admitted.view is None and admitted.wait == 0


async def test_the_burst_is_granted_then_the_wait_is_what_the_refill_needs(pair: Pair):
    token, digest = await issued(pair.tokens)
    granted = [await pair.admission.admit(digest, NO_REFILL) for _ in range(NO_REFILL.burst)]
    assert [a.wait for a in granted] == [0.0] * NO_REFILL.burst
    assert all(a.view is not None and a.view.token_id == token.id for a in granted)
    refused = await pair.admission.admit(digest, NO_REFILL)
    assert refused.view is not None and refused.view.state == "active"
    # One whole unit short, at 0.001/s: about 1000 s (a hair less: time passed).
    assert 990 < refused.wait <= 1000


async def test_the_bucket_refills_at_the_rate(pair: Pair):
    _, digest = await issued(pair.tokens)
    limit = RateLimit(rate_per_second=20, burst=1)
    assert (await pair.admission.admit(digest, limit)).wait == 0
    wait = (await pair.admission.admit(digest, limit)).wait
    assert 0 < wait <= 0.05
    await asyncio.sleep(0.07)
    assert (await pair.admission.admit(digest, limit)).wait == 0


async def test_the_state_is_read_fresh_and_an_unusable_token_still_pays(pair: Pair):
    token, digest = await issued(pair.tokens)
    assert (await pair.admission.admit(digest, NO_REFILL)).view.state == "active"  # type: ignore[union-attr]
    token.suspend("enumeration suspected")
    await pair.tokens.save(token, META)
    after = [await pair.admission.admit(digest, NO_REFILL) for _ in range(3)]
    assert [a.view.state for a in after] == ["suspended"] * 3  # type: ignore[union-attr]
    assert [a.wait > 0 for a in after] == [False, False, True]


async def test_concurrent_takes_grant_exactly_the_burst(pair: Pair):
    _, digest = await issued(pair.tokens)
    limit = RateLimit(rate_per_second=0.001, burst=10)
    answers = await asyncio.gather(*(pair.admission.admit(digest, limit) for _ in range(60)))
    assert sum(a.wait == 0 for a in answers) == limit.burst


async def test_a_crossing_is_reported_once_with_its_count_then_the_window_restarts(pair: Pair):
    token_id = uuid4()
    counts = [await pair.admission.miss(token_id, 3, 60) for _ in range(7)]
    assert counts == [None, None, 3, None, None, 3, None]
    assert await pair.admission.miss(uuid4(), 1, 60) == 1  # a limit of one: the first miss


async def test_misses_older_than_the_window_do_not_count(pair: Pair):
    token_id = uuid4()
    assert await pair.admission.miss(token_id, 2, 0.2) is None
    await asyncio.sleep(0.3)
    assert await pair.admission.miss(token_id, 2, 0.2) is None
    assert await pair.admission.miss(token_id, 2, 0.2) == 2


async def test_concurrent_misses_cross_exactly_once_per_limit(pair: Pair):
    token_id = uuid4()
    counts = await asyncio.gather(*(pair.admission.miss(token_id, 10, 60) for _ in range(35)))
    assert sorted(c for c in counts if c is not None) == [10, 10, 10]


async def test_idle_rows_are_cleaned_and_cleaning_changes_no_answer(pool: asyncpg.Pool):
    repo = PostgresRepository(EventStore(pool))
    tokens = PostgresTokenStore(repo.store, repo.mapper)
    admission = PostgresAdmission(pool, keep_seconds=0.0)  # idle after its 1 s margin
    _, digest = await issued(tokens)
    limit = RateLimit(rate_per_second=1000, burst=2)
    await admission.admit(digest, limit)
    await admission.miss(uuid4(), 5, 0.1)
    assert await admission.clean() == (0, 0)  # used just now: kept
    await asyncio.sleep(1.1)
    assert await admission.clean() == (1, 1)
    assert await pool.fetchval(f"SELECT count(*) FROM {BUCKETS}") == 0
    assert await pool.fetchval(f"SELECT count(*) FROM {WINDOWS}") == 0
    assert [(await admission.admit(digest, limit)).wait for _ in range(2)] == [0.0, 0.0]


async def test_the_tables_are_unlogged(pool: asyncpg.Pool):
    kinds = await pool.fetch(
        "SELECT relname, relpersistence::text FROM pg_class WHERE oid = ANY($1::regclass[])",
        [BUCKETS, WINDOWS],
    )
    assert {r["relpersistence"] for r in kinds} == {"u"}
