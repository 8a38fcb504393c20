"""Token and grant administration under attack: hostile query strings and
bodies, concurrent rotations, other people's ids, paging while tokens are
issued, and the ledger refusing to write. Every refusal is a 4xx
problem+json naming the field; nothing answers 5xx or hangs."""

import asyncio
from typing import Any
from uuid import uuid4

import asyncpg
from aiohttp.test_utils import TestClient
from yarl import URL

from domain.credentials import Token
from infra.eventstore import EventStore
from infra.http.keys import Services
from infra.tokens import _UPSERT as TOKEN_UPSERT
from infra.tokens import PostgresTokenStore
from infra.tokens import _token_args as token_args
from services.actors import ActorKind
from tests.e2e.ledger_support import LedgerWatch, settled
from tests.e2e.support import problem
from tests.e2e.test_fail_closed import REFUSE, LedgerSwitch, ledger_switch  # noqa: F401
from tests.world import META, ROOT, World

HOLDING = "SELECT count(*) FROM carnet.events WHERE position(convert_to($1, 'UTF8') in state) > 0"
LISTINGS = ("/admin/tokens", "/admin/grants", "/practitioners/{practitioner}/grants")


def raw(path: str, query: str) -> URL:
    """A path and a query string sent exactly as written (escapes kept)."""
    return URL(f"{path}?{query}", encoded=True)


async def json_of(answer: Any, status: int) -> Any:
    body = await answer.json(content_type=None)
    assert answer.status == status, body
    return body


async def test_hostile_query_strings_are_refused_naming_the_parameter(
    client: TestClient, world: World
):
    admin = world.auth("admin")
    cases = [
        ("limit=%00", "limit"),
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=1e3", "limit"),
        ("limit=+3", "limit"),
        ("limit=%203", "limit"),
        ("limit=%D9%A3", "limit"),  # an Arabic-Indic three
        ("limit=" + "9" * 40, "limit"),
        ("after=-1", "after"),
        ("after=" + "9" * 19, "after"),
        ("after=", "after"),
        ("limit=1&limit=2", "limit"),
        ("integration_id=%00", "integration_id"),
        ("integration_id=" + "a" * 4000, "integration_id"),
        ("integration_id={00000000-0000-0000-0000-000000000000}", "integration_id"),
        ("integration_id=%FF", "integration_id"),
        ("colour=red", "colour"),
        ("integration_id=null", "integration_id"),  # not "no filter": every grant
        ("%C3%A9t%C3%A9=1", "été"),
        ("min_position=%00", "min_position"),
        ("min_position=-1", "min_position"),
        ("min_position=1&min_position=2", "min_position"),
    ]
    for path in LISTINGS:
        path = path.format(practitioner=world.practitioner)
        for query, field in cases:
            answer = await client.get(raw(path, query), headers=admin)
            await problem(answer, 400, field)
    tokens_only = [
        ("actor_kind=ADMIN", "actor_kind"),
        ("actor_kind=admin%00", "actor_kind"),
        ("state=%C3%A9t%C3%A9", "state"),
        ("state=" + "x" * 4000, "state"),
        ("actor_id=%1B%5B31m", "actor_id"),
        ("establishment_id=null", "establishment_id"),
        ("actor_id=null", "actor_id"),
        ("state=null", "state"),
        ("actor_kind=null", "actor_kind"),
    ]
    for query, field in tokens_only:
        await problem(await client.get(raw("/admin/tokens", query), headers=admin), 400, field)
    await problem(
        await client.get(raw("/admin/grants", "practitioner_id=null"), headers=admin),
        400,
        "practitioner_id",
    )
    # A bogus read-your-writes header is refused too, not ignored.
    answer = await client.get("/admin/tokens", headers={**admin, "Carnet-Min-Position": "soon"})
    await problem(answer, 400, "Carnet-Min-Position")
    # The largest cursor there is: an empty page, not an error.
    largest = raw("/admin/tokens", "after=" + "9" * 18)
    page = await json_of(await client.get(largest, headers=admin), 200)
    assert page == {"tokens": [], "next": None}


async def test_paging_while_tokens_are_issued_misses_and_repeats_nothing(
    client: TestClient, world: World, services: Services
):
    admin = world.auth("admin")
    stop = asyncio.Event()
    issued: list[str] = []

    async def issue() -> None:
        while not stop.is_set():
            made = await services.credentials.issue_token(ROOT, META, ActorKind.ANALYST, label="x")
            issued.append(str(made.actor.token_id))

    before = {str(a.token_id) for a in world.actors.values()}
    writers = [asyncio.create_task(issue()) for _ in range(4)]
    try:
        seen: list[str] = []
        after = 0
        while True:
            page = await json_of(
                await client.get(
                    "/admin/tokens", params={"limit": "3", "after": str(after)}, headers=admin
                ),
                200,
            )
            seen += [t["token_id"] for t in page["tokens"]]
            if page["next"] is None or len(seen) > 120:
                break
            after = page["next"]
            await asyncio.sleep(0)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert len(seen) == len(set(seen)), "a token was listed twice"
    assert before <= set(seen)
    # Whatever was committed before the last page was read and sits before
    # the cursor must have been listed: walk once more, quietly, and compare.
    everything: list[str] = []
    after = 0
    while True:
        page = await json_of(
            await client.get(
                "/admin/tokens", params={"limit": "500", "after": str(after)}, headers=admin
            ),
            200,
        )
        everything += [t["token_id"] for t in page["tokens"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert set(everything) == before | set(issued)
    # The pages walked under load are a prefix of the full order.
    assert everything[: len(seen)] == seen


async def _walk(client: TestClient, admin: dict[str, str], limit: int, after: int = 0) -> list[str]:
    seen: list[str] = []
    while True:
        page = await json_of(
            await client.get(
                "/admin/tokens", params={"limit": str(limit), "after": str(after)}, headers=admin
            ),
            200,
        )
        seen += [t["token_id"] for t in page["tokens"]]
        if page["next"] is None:
            return seen
        after = page["next"]


async def test_a_token_committed_late_is_not_skipped_by_a_walk_under_way(
    client: TestClient, world: World, services: Services, pool: asyncpg.Pool
):
    """Positions are taken in one order and committed in another (DESIGN
    decision 2): a page must not move its cursor past a token whose
    transaction is still open, or that token is never listed."""
    admin = world.auth("admin")
    store = services.credentials.tokens
    assert isinstance(store, PostgresTokenStore)
    held = Token(
        token_hash="00" * 32,
        actor_kind="analyst",
        actor_id=uuid4(),
        establishment_id=None,
        display_name="held",
        expires_at=None,
    )
    before = await _walk(client, admin, 500)
    async with pool.acquire() as conn:
        open_tx = conn.transaction()
        await open_tx.start()
        stored = await store.mapper.stored_events([held])
        await EventStore.append_on(conn, stored, META)
        await conn.execute(TOKEN_UPSERT, *token_args(held))
        later = [
            str((await services.credentials.issue_token(ROOT, META, ActorKind.ANALYST, label=n))
                .actor.token_id)
            for n in ("second", "third")
        ]  # fmt: skip
        # The page is asked for while that transaction is open, which ends
        # a moment later, as transactions do.
        asked = asyncio.create_task(
            client.get("/admin/tokens", params={"limit": str(len(before) + 1)}, headers=admin)
        )
        await asyncio.sleep(0.2)
        await open_tx.commit()
        page = await json_of(await asked, 200)
        walked = [t["token_id"] for t in page["tokens"]]
    if page["next"] is not None:
        walked += await _walk(client, admin, 500, page["next"])
    everything = await _walk(client, admin, 500)
    assert set(everything) == {*before, str(held.id), *later}
    assert walked == everything[: len(walked)], "a walk skipped a token committed late"


async def test_two_concurrent_rotations_make_exactly_one_new_token(
    client: TestClient, world: World, services: Services
):
    admin = world.auth("admin")
    old = world.actors["practitioner"]
    path = f"/admin/tokens/{old.token_id}/rotate"
    answers = await asyncio.gather(*(client.post(path, headers=admin) for _ in range(4)))
    statuses = sorted(a.status for a in answers)
    assert statuses.count(201) == 1, statuses
    assert all(s in (409, 422) for s in statuses if s != 201), statuses
    for answer in answers:
        if answer.status != 201:
            await problem(answer, answer.status)
    listed = await json_of(
        await client.get(
            "/admin/tokens", params={"actor_id": str(world.practitioner)}, headers=admin
        ),
        200,
    )
    states = sorted(t["state"] for t in listed["tokens"])
    assert states == ["active", "revoked"], listed
    assert await services.credentials.authenticate(world.tokens["practitioner"]) is None


async def test_rotating_revoked_expired_and_other_peoples_tokens(
    client: TestClient, world: World, services: Services, pool: asyncpg.Pool, clock: Any
):
    admin = world.auth("admin")
    # An expired token may be rotated (its holder lost access: that is the point).
    expiring = await services.credentials.issue_token(
        ROOT, META, ActorKind.ANALYST, label="short", valid_days=1
    )
    clock.advance(days=2)
    new = await json_of(
        await client.post(f"/admin/tokens/{expiring.actor.token_id}/rotate", headers=admin), 201
    )
    assert await services.credentials.authenticate(new["token"]) is not None
    # A revoked one may not.
    revoked = world.actors["analyst"].token_id
    await services.credentials.revoke_token(ROOT, META, revoked, "gone")  # type: ignore[arg-type]
    await problem(
        await client.post(f"/admin/tokens/{revoked}/rotate", headers=admin), 422, "token_id"
    )
    # A patient rotating the practitioner's token: refused, recorded, nothing changed.
    watch = LedgerWatch(pool)
    await watch.mark()
    target = world.actors["practitioner"].token_id
    await problem(
        await client.post(f"/admin/tokens/{target}/rotate", headers=world.auth("patient")), 403
    )
    (entry,) = settled(await watch.new())
    assert (entry.record.outcome, entry.record.resource_type) == ("denied", "token")
    assert str(target) in entry.record.record_ids
    assert await services.credentials.authenticate(world.tokens["practitioner"]) is not None
    # Revoking someone else's token looks as if it did not exist.
    await problem(
        await client.post(
            f"/tokens/{target}/revoke", json={"reason": "x"}, headers=world.auth("patient")
        ),
        404,
        "token_id",
    )
    assert await services.credentials.authenticate(world.tokens["practitioner"]) is not None


async def test_rotation_secret_appears_only_in_its_answer(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    admin = world.auth("admin")
    old = world.actors["staff"].token_id
    answer = await client.post(f"/admin/tokens/{old}/rotate", json={"valid_days": 7}, headers=admin)
    new = await json_of(answer, 201)
    assert answer.headers["Cache-Control"] == "no-store"
    secret = new["token"]
    listed = await client.get("/admin/tokens", headers=admin)
    assert secret not in await listed.text()
    ledger = await client.get(
        "/ledger", params={"resource_type": "token"}, headers=world.auth("analyst")
    )
    assert ledger.status == 200
    assert secret not in await ledger.text()
    async with pool.acquire() as conn:
        found = await conn.fetchval(
            HOLDING,
            secret,
        )
        assert found == 0
        hashes = await conn.fetchval(
            HOLDING,
            secret[len("carnet_") :],
        )
        assert hashes == 0


async def test_hostile_bodies_are_refused_naming_the_field(client: TestClient, world: World):
    admin = world.auth("admin")
    software = world.actors["integration"].id
    grant = f"/practitioners/{world.practitioner}/grants/{software}"
    rotate = f"/admin/tokens/{world.actors['analyst'].token_id}/rotate"
    revoke = f"/tokens/{world.actors['analyst'].token_id}/revoke"
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
        ("PUT", grant, b'{"scopes": ["agenda:write"]}', json_type, 400, "scopes[0]"),
        ("PUT", grant, b'{"scopes": []}', json_type, 400, "scopes"),
        ("PUT", grant, b'{"scopes": "agenda:read"}', json_type, 400, "scopes"),
        ("PUT", grant, b'{"scopes": ["agenda:read"], "x": 1}', json_type, 400, "x"),
        ("PUT", grant, b'{"scopes": ["agenda:read\\u0000"]}', json_type, 400, "scopes[0]"),
        ("PUT", grant, b"[]", json_type, 400, "body"),
        ("PUT", grant, b"{", json_type, 400, "body"),
        ("PUT", grant, b"", json_type, 400, "body"),
        ("PUT", grant, b'{"scopes": ["agenda:read"]}', {"Content-Type": "text/plain"}, 415,
         "Content-Type"),
        ("PUT", grant, b"x" * (70 * 1024), json_type, 413, "body"),
        # Duplicate keys: the last one wins in msgspec; the first must not smuggle anything.
        ("PUT", grant, b'{"scopes": ["agenda:read"], "scopes": ["nope"]}', json_type, 400,
         "scopes[0]"),
        ("POST", rotate, b'{"valid_days": -1}', json_type, 400, "valid_days"),
        ("POST", rotate, b'{"valid_days": 1e400}', json_type, 400, "valid_days"),
        ("POST", rotate, b'{"valid_days": "7"}', json_type, 400, "valid_days"),
        ("POST", rotate, b'{"valid_days": 99999999999999999999999}', json_type, 400,
         "valid_days"),
        ("POST", rotate, b"{}", {"Content-Type": "application/xml"}, 415, "Content-Type"),
        ("POST", rotate, b"null", json_type, 400, "body"),
        ("POST", revoke, b'{"reason": "' + b"r" * 600 + b'"}', json_type, 400, "reason"),
        ("POST", revoke, b'{"reason": "\\u001b[2J"}', json_type, 400, "reason"),
    ]  # fmt: skip
    for method, path, body, headers, status, field in cases:
        answer = await client.request(method, path, data=body, headers={**admin, **headers})
        await problem(answer, status, field)
    # Nothing above changed a thing: the grant never existed, the token is active.
    await problem(await client.delete(grant, headers=admin), 404, "integration_id")
    tokens = await json_of(
        await client.get("/admin/tokens", params={"actor_kind": "analyst"}, headers=admin), 200
    )
    assert [t["state"] for t in tokens["tokens"]] == ["active"]


async def test_grants_on_other_peoples_agendas_look_like_nothing(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    software = world.actors["integration"].id
    elsewhere = f"/practitioners/{world.other_practitioner}/grants/{software}"
    body = {"scopes": ["agenda:read"]}
    watch = LedgerWatch(pool)
    for who in ("practitioner", "staff", "patient", "integration", "analyst"):
        await watch.mark()
        await problem(
            await client.put(elsewhere, json=body, headers=world.auth(who)), 404, "practitioner_id"
        )
        await problem(
            await client.get(
                f"/practitioners/{world.other_practitioner}/grants", headers=world.auth(who)
            ),
            404,
            "practitioner_id",
        )
        entries = settled(await watch.new())
        assert [e.record.outcome for e in entries] == ["not-found", "not-found"], who
        assert all(e.record.resource_type == "grant" for e in entries)
    # The same answer as a practitioner that does not exist at all.
    await problem(
        await client.put(
            f"/practitioners/{uuid4()}/grants/{software}", json=body, headers=world.auth("admin")
        ),
        404,
        "practitioner_id",
    )
    # Duplicated scopes are one scope.
    mine = f"/practitioners/{world.practitioner}/grants/{software}"
    given = await json_of(
        await client.put(
            mine, json={"scopes": ["agenda:read", "agenda:read"]}, headers=world.auth("admin")
        ),
        200,
    )
    assert given["scopes"] == ["agenda:read"]


async def test_admin_changes_fail_closed_without_a_ledger(
    client: TestClient,
    world: World,
    services: Services,
    ledger_switch: LedgerSwitch,  # noqa: F811
):
    admin = world.auth("admin")
    software = world.actors["integration"].id
    target = world.actors["analyst"].token_id
    await ledger_switch.break_it()
    calls = [
        ("POST", "/admin/tokens", {"actor_kind": "analyst", "label": "x"}),
        ("GET", "/admin/tokens", None),
        ("GET", "/admin/grants", None),
        ("POST", f"/admin/tokens/{target}/rotate", None),
        ("POST", f"/tokens/{target}/revoke", {"reason": "x"}),
        ("PUT", f"/practitioners/{world.practitioner}/grants/{software}",
         {"scopes": ["agenda:read"]}),
        ("DELETE", f"/practitioners/{world.practitioner}/grants/{software}", None),
        ("GET", f"/practitioners/{world.practitioner}/grants", None),
    ]  # fmt: skip
    head = await services.read.store.last_position()
    for method, path, body in calls:
        answer = await client.request(method, path, json=body, headers=admin)
        text = await answer.text()
        assert answer.status == 503, (method, path, text)
        assert "carnet_" not in text
    # Write-ahead: no change was made unrecorded.
    assert await services.read.store.last_position() == head
    await ledger_switch.mend_it()
    assert await services.credentials.authenticate(world.tokens["analyst"]) is not None
