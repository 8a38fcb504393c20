"""Token and grant administration through the API, without SQL: list tokens
(never a secret), rotate, lift a suspension, list grants; each call an event
where it changes something, and an entry in the access ledger either way."""

from typing import Any
from uuid import uuid4

from aiohttp.test_utils import TestClient

from infra import access_index
from infra.http.keys import Services
from tests.e2e.ledger_support import LedgerWatch, settled
from tests.world import META, World


async def _json(answer: Any, status: int) -> Any:
    body = await answer.json(content_type=None)
    assert answer.status == status, body
    return body


async def test_listing_tokens_shows_who_and_state_never_a_secret(
    client: TestClient, world: World, services: Services, pool: Any
):
    admin = world.auth("admin")
    # A request by the patient's token, so that it has a last use to show.
    await _json(await client.get(f"/patients/{world.patient}", headers=world.auth("patient")), 200)
    await access_index.catch_up_index(pool, 30)
    body = await _json(await client.get("/admin/tokens", headers=admin), 200)
    rows = {r["token_id"]: r for r in body["tokens"]}
    patient = world.actors["patient"]
    mine = rows[str(patient.token_id)]
    assert (mine["actor_kind"], mine["actor_id"], mine["state"]) == (
        "patient",
        str(world.patient),
        "active",
    )
    assert mine["display_name"] == "patient" and mine["created"] and mine["last_used_at"]
    assert rows[str(world.actors["analyst"].token_id)]["last_used_at"] is None
    text = str(body)
    assert not any(secret in text for secret in world.tokens.values())
    assert "token_hash" not in text and "carnet_" not in text

    only = await _json(
        await client.get("/admin/tokens", params={"actor_id": str(world.patient)}, headers=admin),
        200,
    )
    assert [r["token_id"] for r in only["tokens"]] == [str(patient.token_id)]
    staff = await _json(
        await client.get("/admin/tokens", params={"actor_kind": "staff"}, headers=admin), 200
    )
    assert {r["actor_kind"] for r in staff["tokens"]} == {"staff"} and len(staff["tokens"]) == 2

    # Paged like GET /ledger: `next` is the following page's `after`.
    seen, after = [], 0
    while True:
        page = await _json(
            await client.get(
                "/admin/tokens", params={"limit": "4", "after": str(after)}, headers=admin
            ),
            200,
        )
        seen += [r["token_id"] for r in page["tokens"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == list(rows) and len(seen) == len(set(seen)) == len(world.tokens)


async def test_bad_queries_name_the_field_and_non_admins_are_refused(
    client: TestClient, world: World
):
    admin = world.auth("admin")
    for params, field in (
        ({"actor_id": "not-an-id"}, "actor_id"),
        ({"state": "lost"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"after": "-1"}, "after"),
        ({"colour": "red"}, "colour"),
    ):
        answer = await client.get("/admin/tokens", params=params, headers=admin)
        problem = await _json(answer, 400)
        assert answer.content_type == "application/problem+json"
        assert problem["field"] == field, (params, problem)
    problem = await _json(
        await client.get("/admin/grants", params={"integration_id": "x"}, headers=admin), 400
    )
    assert problem["field"] == "integration_id"
    for who in ("patient", "practitioner", "staff", "analyst", "integration"):
        await _json(await client.get("/admin/tokens", headers=world.auth(who)), 403)
        await _json(await client.get("/admin/grants", headers=world.auth(who)), 403)
        rotate = f"/admin/tokens/{world.actors[who].token_id}/rotate"
        await _json(await client.post(rotate, headers=world.auth(who)), 403)


async def test_rotation_revokes_the_old_token_and_the_new_one_works(
    client: TestClient, world: World, pool: Any
):
    admin = world.auth("admin")
    old = world.actors["practitioner"]
    watch = LedgerWatch(pool)
    await watch.mark()
    answer = await client.post(f"/admin/tokens/{old.token_id}/rotate", headers=admin)
    new = await _json(answer, 201)
    assert answer.headers["Cache-Control"] == "no-store"
    assert new["replaces"] == str(old.token_id) and new["token"].startswith("carnet_")
    assert (new["actor_kind"], new["actor_id"]) == ("practitioner", str(world.practitioner))
    (entry,) = settled(await watch.new())
    assert (entry.record.resource_type, entry.record.action, entry.record.outcome) == (
        "token",
        "change",
        "allowed",
    )
    assert set(entry.record.record_ids) == {str(old.token_id), new["token_id"]}
    assert new["token"] not in str(entry.record)

    agenda = f"/practitioners/{world.practitioner}/agenda"
    await _json(
        await client.get(agenda, params={"date": "2026-12-02"}, headers=world.auth("practitioner")),
        401,
    )
    fresh = {"Authorization": f"Bearer {new['token']}"}
    await _json(await client.get(agenda, params={"date": "2026-12-02"}, headers=fresh), 200)

    listed = await _json(
        await client.get(
            "/admin/tokens", params={"actor_id": str(world.practitioner)}, headers=admin
        ),
        200,
    )
    states = {r["token_id"]: (r["state"], r["reason"]) for r in listed["tokens"]}
    assert states == {str(old.token_id): ("revoked", "rotated"), new["token_id"]: ("active", "")}
    # A revoked token is not rotated again (an invalid transition, like revoking it twice).
    problem = await _json(
        await client.post(f"/admin/tokens/{old.token_id}/rotate", headers=admin), 422
    )
    assert problem["field"] == "token_id"
    await _json(await client.post(f"/admin/tokens/{uuid4()}/rotate", headers=admin), 404)
    # With a body: a validity period.
    other = world.actors["analyst"].token_id
    body = await _json(
        await client.post(f"/admin/tokens/{other}/rotate", json={"valid_days": 30}, headers=admin),
        201,
    )
    listed = await _json(
        await client.get(
            "/admin/tokens", params={"state": "active", "actor_kind": "analyst"}, headers=admin
        ),
        200,
    )
    (analyst,) = [r for r in listed["tokens"] if r["token_id"] == body["token_id"]]
    assert analyst["expires_at"] is not None
    problem = await _json(
        await client.post(
            f"/admin/tokens/{body['token_id']}/rotate", json={"valid_days": 0}, headers=admin
        ),
        400,
    )
    assert problem["field"] == "valid_days"


async def test_a_suspended_token_is_found_and_lifted_without_sql(
    client: TestClient, world: World, services: Services
):
    admin = world.auth("admin")
    patient = world.actors["patient"]
    assert patient.token_id is not None
    await services.credentials.suspend_token(META, patient.token_id, "enumeration suspected")
    await _json(await client.get(f"/patients/{world.patient}", headers=world.auth("patient")), 401)
    listed = await _json(
        await client.get("/admin/tokens", params={"state": "suspended"}, headers=admin), 200
    )
    assert [(r["token_id"], r["reason"]) for r in listed["tokens"]] == [
        (str(patient.token_id), "enumeration suspected")
    ]
    lifted = await _json(
        await client.post(f"/admin/tokens/{patient.token_id}/lift-suspension", headers=admin), 200
    )
    assert lifted == {"token_id": str(patient.token_id), "state": "active"}
    await _json(await client.get(f"/patients/{world.patient}", headers=world.auth("patient")), 200)


async def test_grants_are_listed_for_admins_and_for_the_practitioner(
    client: TestClient, world: World, pool: Any
):
    software = world.actors["integration"].id
    admin, doctor = world.auth("admin"), world.auth("practitioner")
    grant = f"/practitioners/{world.practitioner}/grants/{software}"
    given = await _json(
        await client.put(grant, json={"scopes": ["agenda:read"]}, headers=doctor), 200
    )
    assert given["scopes"] == ["agenda:read"]
    elsewhere = f"/practitioners/{world.other_practitioner}/grants/{software}"
    await _json(await client.put(elsewhere, json={"scopes": ["agenda:read"]}, headers=admin), 200)

    everything = await _json(await client.get("/admin/grants", headers=admin), 200)
    assert {(g["practitioner_id"], g["integration_id"]) for g in everything["grants"]} == {
        (str(world.practitioner), str(software)),
        (str(world.other_practitioner), str(software)),
    }
    mine_path = f"/practitioners/{world.practitioner}/grants"
    watch = LedgerWatch(pool)
    await watch.mark()
    mine = await _json(await client.get(mine_path, headers=doctor), 200)
    assert mine == {
        "grants": [
            {
                "practitioner_id": str(world.practitioner),
                "integration_id": str(software),
                "scopes": ["agenda:read"],
            }
        ],
        "next": None,
    }
    (entry,) = settled(await watch.new())
    assert (entry.record.resource_type, entry.record.action) == ("grant", "search")
    assert entry.record.patient_ids == ()
    # Another practice's agenda is, to this practitioner, no agenda at all.
    other = f"/practitioners/{world.other_practitioner}/grants"
    foreign = await client.get(other, headers=doctor)
    missing = await client.get(f"/practitioners/{uuid4()}/grants", headers=doctor)
    assert foreign.status == missing.status == 404
    assert (await foreign.json())["detail"] == (await missing.json())["detail"]

    await _json(await client.delete(grant, headers=doctor), 200)
    after = await _json(
        await client.get(
            "/admin/grants", params={"practitioner_id": str(world.practitioner)}, headers=admin
        ),
        200,
    )
    assert after["grants"] == []
