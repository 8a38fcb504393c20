"""The token store port, one contract for both adapters: the in-memory fake the
service tests use and the PostgreSQL store production uses. What the admin
listings rely on (order, cursor, filters, no secret, grants in force) must
hold for both, or the fake would let service tests pass that production fails.
"""

import copy
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from domain.credentials import Grant, Token
from domain.ledger import AccessRecord
from infra import access_index
from infra.eventstore import EventStore
from infra.ledger import Ledger
from infra.repository import PostgresRepository
from infra.tokens import GRANTS, PostgresTokenStore, ensure_grant_index
from services.credentials import hash_token
from services.ports import GrantQuery, Metadata, TokenQuery, TokenStore, VersionConflict
from tests.unit.fakes import FakeRepository, FakeTokenStore

META = Metadata(actor_kind="admin", actor_id="contract")


@pytest.fixture(params=["fake", "postgres"])
async def store(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> AsyncIterator[TokenStore]:
    if request.param == "fake":
        yield FakeTokenStore(FakeRepository())
        return
    repo = PostgresRepository(EventStore(pool))
    yield PostgresTokenStore(repo.store, repo.mapper)


def token(kind: str = "patient", actor_id: UUID | None = None, **kwargs: Any) -> Token:
    return Token(
        token_hash=hash_token(secrets.token_hex(8)).hex(),
        actor_kind=kind,
        actor_id=actor_id or uuid4(),
        establishment_id=kwargs.get("establishment_id"),
        display_name=kwargs.get("display_name", kind),
        expires_at=kwargs.get("expires_at"),
    )


async def test_tokens_are_listed_in_issue_order_with_their_state_and_never_a_secret(
    store: TokenStore,
):
    alice = uuid4()
    first = token("patient", alice, display_name="Alice, phone")
    second = token("admin")
    third = token("patient", alice, expires_at=datetime(2030, 1, 1, tzinfo=UTC))
    for t in (first, second, third):
        await store.save(t, META)
    first.suspend("enumeration suspected: 30 misses in 60s")
    await store.save(first, META)

    rows = await store.tokens(TokenQuery())
    assert [r.token_id for r in rows] == [first.id, second.id, third.id]
    assert [r.position for r in rows] == sorted(r.position for r in rows)
    one = rows[0]
    assert (one.actor_kind, one.actor_id, one.display_name, one.state) == (
        "patient",
        alice,
        "Alice, phone",
        "suspended",
    )
    assert one.reason.startswith("enumeration suspected")
    assert rows[1].reason == "" and rows[1].state == "active"
    assert rows[2].expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert all(isinstance(r.created, datetime) and r.created.tzinfo for r in rows)
    # Nothing in a row can be turned into the token: no hash, no secret.
    assert {f.name for f in dataclasses.fields(one)}.isdisjoint({"token_hash", "secret"})


async def test_token_filters_and_the_cursor(store: TokenStore):
    alice, place = uuid4(), uuid4()
    made = [
        token("patient", alice),
        token("staff", establishment_id=place),
        token("patient", alice),
        token("analyst"),
    ]
    for t in made:
        await store.save(t, META)
    made[2].revoke("lost phone")
    await store.save(made[2], META)

    def ids(rows: Any) -> list[UUID]:
        return [r.token_id for r in rows]

    assert ids(await store.tokens(TokenQuery(actor_ids=frozenset({alice})))) == [
        made[0].id,
        made[2].id,
    ]
    assert ids(await store.tokens(TokenQuery(actor_kinds=frozenset({"staff"})))) == [made[1].id]
    revoked = await store.tokens(TokenQuery(states=frozenset({"revoked"})))
    assert ids(revoked) == [made[2].id] and revoked[0].reason == "lost phone"
    assert ids(await store.tokens(TokenQuery(establishment_ids=frozenset({place})))) == [made[1].id]
    page = await store.tokens(TokenQuery(limit=2))
    assert ids(page) == [made[0].id, made[1].id]
    rest = await store.tokens(TokenQuery(after=page[-1].position, limit=2))
    assert ids(rest) == [made[2].id, made[3].id]
    assert await store.tokens(TokenQuery(after=rest[-1].position)) == []


async def test_save_all_is_one_change_or_none(store: TokenStore):
    old = token("practitioner")
    await store.save(old, META)
    stale = copy.deepcopy(old)  # as another writer loaded it
    old.revoke("rotated")
    new = token("practitioner", old.actor_id)
    await store.save_all([old, new], META)
    states = {r.token_id: r.state for r in await store.tokens(TokenQuery())}
    assert states == {old.id: "revoked", new.id: "active"}
    view = await store.find(bytes.fromhex(new.token_hash))
    assert view is not None and view.state == "active"

    # A rotation that lost the race on the old token leaves nothing behind.
    stale.revoke("rotated")
    newer = token("practitioner", old.actor_id)
    with pytest.raises(VersionConflict):
        await store.save_all([stale, newer], META)
    assert newer.id not in {r.token_id for r in await store.tokens(TokenQuery())}
    assert await store.find(bytes.fromhex(newer.token_hash)) is None


async def test_grants_in_force_are_listed_by_practitioner_and_integration(store: TokenStore):
    dr, other_dr, software, other_software = uuid4(), uuid4(), uuid4(), uuid4()
    a = Grant(practitioner_id=dr, integration_id=software, scopes=("agenda:read",))
    b = Grant(practitioner_id=other_dr, integration_id=software, scopes=("agenda:read",))
    c = Grant(practitioner_id=dr, integration_id=other_software, scopes=("agenda:read",))
    for g in (a, b, c):
        await store.save_grant(g, META)
    a.change(("agenda:read", "appointments:write"))
    await store.save_grant(a, META)
    c.revoke()
    await store.save_grant(c, META)

    everything = await store.grants(GrantQuery())
    assert [(g.grant_id, g.scopes) for g in everything] == [
        (a.id, ("agenda:read", "appointments:write")),
        (b.id, ("agenda:read",)),
    ]  # c is withdrawn: not in force
    assert [
        g.grant_id for g in await store.grants(GrantQuery(practitioner_ids=frozenset({dr})))
    ] == [a.id]
    by_software = await store.grants(GrantQuery(integration_ids=frozenset({software})))
    assert [g.grant_id for g in by_software] == [a.id, b.id]
    first = await store.grants(GrantQuery(limit=1))
    assert [g.grant_id for g in first] == [a.id]
    assert [g.grant_id for g in await store.grants(GrantQuery(after=first[0].position))] == [b.id]
    # Given again, a withdrawn grant is back in force.
    c.change(("agenda:read",))
    await store.save_grant(c, META)
    assert c.id in {g.grant_id for g in await store.grants(GrantQuery())}


# -- the PostgreSQL store only ------------------------------------------------


async def test_last_use_is_the_tokens_last_entry_in_the_access_index(pool: asyncpg.Pool):
    repo = PostgresRepository(EventStore(pool))
    store = PostgresTokenStore(repo.store, repo.mapper)
    used, unused = token("patient"), token("patient")
    await store.save(used, META)
    await store.save(unused, META)
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    ledger = Ledger(repo.store)
    for minutes in (0, 45, 10):
        await ledger.record(
            AccessRecord(
                actor_kind="patient",
                actor_id=str(used.actor_id),
                token_id=str(used.id),
                action="read",
                resource_type="patient",
                at=at + timedelta(minutes=minutes),
            )
        )
    await ledger.close()
    await access_index.catch_up_index(pool, 30)
    rows = {r.token_id: r for r in await store.tokens(TokenQuery())}
    assert rows[used.id].last_used_at == at + timedelta(minutes=45)
    assert rows[unused.id].last_used_at is None


async def test_the_grant_index_is_filled_from_the_log_when_made(pool: asyncpg.Pool):
    # Grants given before the index existed (saved straight to the log).
    repo = PostgresRepository(EventStore(pool))
    dr, software = uuid4(), uuid4()
    kept = Grant(practitioner_id=dr, integration_id=software, scopes=("agenda:read",))
    await repo.save([kept], META)
    kept.change(("agenda:read", "patients:contact:read"))
    await repo.save([kept], META)
    gone = Grant(practitioner_id=dr, integration_id=uuid4(), scopes=("agenda:read",))
    await repo.save([gone], META)
    gone.revoke()
    await repo.save([gone], META)
    async with pool.acquire() as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {GRANTS}")
        assert await ensure_grant_index(conn) is True
        assert await ensure_grant_index(conn) is False  # made once

    store = PostgresTokenStore(repo.store, repo.mapper)
    found = await store.grants(GrantQuery())
    assert [(g.grant_id, g.practitioner_id, g.integration_id, g.scopes) for g in found] == [
        (kept.id, dr, software, ("agenda:read", "patients:contact:read"))
    ]
    withdrawn = await pool.fetchval(f"SELECT scopes FROM {GRANTS} WHERE grant_id = $1", gone.id)
    assert withdrawn == []
