"""Third-party practice software acts only under a practitioner's grant, sees
no patient identity without `patients:contact:read`, and loses access on the
next request once the grant or its token is revoked."""

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import FakeClock
from tests.e2e.support import WEDNESDAY, ok, paris, problem
from tests.world import World

SOFTWARE = "integration"


async def grant(
    client: TestClient,
    world: World,
    scopes: list[str],
    who: str = "practitioner",
    practitioner: Any = None,
) -> Any:
    integration = world.actors[SOFTWARE].id
    return await client.put(
        f"/practitioners/{practitioner or world.practitioner}/grants/{integration}",
        json={"scopes": scopes},
        headers=world.auth(who),
    )


async def agenda(client: TestClient, world: World, practitioner: Any) -> Any:
    return await client.get(
        f"/practitioners/{practitioner}/agenda",
        params={"date": WEDNESDAY},
        headers=world.auth(SOFTWARE),
    )


async def booked(client: TestClient, world: World, practitioner: Any, at: str) -> Any:
    return await ok(
        await client.post(
            "/appointments",
            json={
                "practitioner_id": str(practitioner),
                "motive_id": "consultation",
                "start": paris(WEDNESDAY, at),
                "patient_id": str(world.patient),
            },
            headers=world.auth("admin"),
        ),
        201,
    )


async def test_without_a_grant_an_integration_sees_nothing(client: TestClient, world: World):
    appointment = await booked(client, world, world.practitioner, "09:00")
    assert (await agenda(client, world, world.practitioner)).status == 404
    answer = await client.get(f"/appointments/{appointment['id']}", headers=world.auth(SOFTWARE))
    await problem(answer, 404, "appointment_id")


async def test_agenda_read_shows_times_and_ids_but_no_patient_identity(
    client: TestClient, world: World
):
    appointment = await booked(client, world, world.practitioner, "09:00")
    await ok(await grant(client, world, ["agenda:read"]))
    (entry,) = (await ok(await agenda(client, world, world.practitioner)))["appointments"]
    assert entry["id"] == appointment["id"] and entry["start"] == appointment["start"]
    assert entry["patient_id"] is None and entry["patient_name"] is None
    single = await ok(
        await client.get(f"/appointments/{appointment['id']}", headers=world.auth(SOFTWARE))
    )
    assert single["patient_id"] is None and single["start"] == appointment["start"]
    # With patients:contact:read the same call names the patient.
    await ok(await grant(client, world, ["agenda:read", "patients:contact:read"]))
    (entry,) = (await ok(await agenda(client, world, world.practitioner)))["appointments"]
    assert entry["patient_name"] == "Alice Test"


async def test_a_grant_on_one_practitioner_opens_nothing_on_another(
    client: TestClient, world: World
):
    await booked(client, world, world.other_practitioner, "09:00")
    await ok(await grant(client, world, ["agenda:read", "appointments:write"]))
    other = await agenda(client, world, world.other_practitioner)
    unknown = await agenda(client, world, "00000000-0000-0000-0000-0000000000ff")
    assert other.status == unknown.status == 404
    assert await other.read() == await unknown.read()
    booking = await client.post(
        "/appointments",
        json={
            "practitioner_id": str(world.other_practitioner),
            "motive_id": "consultation",
            "start": paris(WEDNESDAY, "10:00"),
            "patient_id": str(world.patient),
        },
        headers=world.auth(SOFTWARE),
    )
    assert booking.status == 404


async def test_appointments_write_lets_the_software_book_on_the_granted_agenda(
    client: TestClient, world: World
):
    await ok(await grant(client, world, ["appointments:write", "agenda:read"]))
    made = await ok(
        await client.post(
            "/appointments",
            json={
                "practitioner_id": str(world.practitioner),
                "motive_id": "consultation",
                "start": paris(WEDNESDAY, "10:00"),
                "patient_id": str(world.patient),
            },
            headers=world.auth(SOFTWARE),
        ),
        201,
    )
    assert made["source"] == "integration" and made["patient_id"] is None
    again = await ok(await client.get(f"/appointments/{made['id']}", headers=world.auth(SOFTWARE)))
    assert again["patient_id"] is None


async def test_a_revoked_grant_refuses_the_very_next_call(client: TestClient, world: World):
    await ok(await grant(client, world, ["agenda:read"]))
    assert (await agenda(client, world, world.practitioner)).status == 200
    integration = world.actors[SOFTWARE].id
    revoked = await ok(
        await client.delete(
            f"/practitioners/{world.practitioner}/grants/{integration}",
            headers=world.auth("practitioner"),
        )
    )
    assert revoked["scopes"] == []
    assert (await agenda(client, world, world.practitioner)).status == 404


async def test_only_the_practitioner_their_desk_or_an_admin_may_grant(
    client: TestClient, world: World
):
    assert (await grant(client, world, ["agenda:read"], who="staff")).status == 200
    refused = await grant(client, world, ["agenda:read"], who="other_practitioner")
    await problem(refused, 404, "practitioner_id")
    refused = await grant(client, world, ["agenda:read"], who="other_staff")
    await problem(refused, 404, "practitioner_id")
    await problem(await grant(client, world, ["everything"]), 400, "scopes[0]")


async def test_a_revoked_token_is_refused_on_its_next_request(client: TestClient, world: World):
    me = world.actors["patient"]
    assert (
        await client.get(f"/patients/{world.patient}", headers=world.auth("patient"))
    ).status == 200
    await ok(
        await client.post(
            f"/tokens/{me.token_id}/revoke",
            json={"reason": "lost phone"},
            headers=world.auth("patient"),
        )
    )
    answer = await client.get(f"/patients/{world.patient}", headers=world.auth("patient"))
    await problem(answer, 401, "Authorization")
    # Someone else's token cannot be revoked by a non-admin: it does not exist for them.
    other = world.actors["other_patient"]
    answer = await client.post(
        f"/tokens/{other.token_id}/revoke", json={}, headers=world.auth("practitioner")
    )
    await problem(answer, 404, "token_id")


async def test_an_expired_token_is_refused(client: TestClient, world: World, clock: FakeClock):
    issued = await ok(
        await client.post(
            "/admin/tokens",
            json={"actor_kind": "patient", "actor_id": str(world.patient), "valid_days": 1},
            headers=world.auth("admin"),
        ),
        201,
    )
    headers = {"Authorization": f"Bearer {issued['token']}"}
    assert (await client.get(f"/patients/{world.patient}", headers=headers)).status == 200
    clock.advance(days=1, seconds=1)
    await problem(await client.get(f"/patients/{world.patient}", headers=headers), 401)


async def test_token_and_grant_changes_are_events_in_the_log(client, world: World, services):
    await ok(await grant(client, world, ["agenda:read"]))
    integration = world.actors[SOFTWARE].id
    await ok(
        await client.delete(
            f"/practitioners/{world.practitioner}/grants/{integration}",
            headers=world.auth("practitioner"),
        )
    )
    me = world.actors["patient"]
    await ok(
        await client.post(f"/tokens/{me.token_id}/revoke", json={}, headers=world.auth("patient"))
    )
    topics = [
        r[0]
        for r in await services.read.pool.fetch("SELECT topic FROM carnet.events ORDER BY position")
    ]
    for topic in ("Token.Issued", "Token.Revoked", "Grant.Given", "Grant.Revoked"):
        assert any(t.endswith(topic) for t in topics), topic
    secrets_in_log = await services.read.pool.fetchval(
        "SELECT count(*) FROM carnet.events WHERE convert_from(state, 'UTF8') LIKE '%carnet_%'"
    )
    assert secrets_in_log == 0
