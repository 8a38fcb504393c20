"""GET /me/access-log: a patient sees who touched their data, named as a person
would know them (Dr One, the software's name), never by a token id; only a
patient has one; and reading it is itself recorded."""

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from infra.http.keys import Services
from tests.e2e.ledger_support import LedgerWatch
from tests.e2e.support import WEDNESDAY, booked, ok, paris, problem
from tests.world import World

SOFTWARE_LABEL = "MediAgenda Pro"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def projected(services: Services) -> None:
    """Wait until the access log holds every ledger entry written so far.

    GET /me/access-log does not honour Carnet-Min-Position: it is fed by the
    ledger, asynchronously, like any read model.
    """
    await services.read.wait_for(await services.read.store.last_position(), ["access_log"])


async def the_software(client: TestClient, world: World) -> dict[str, str]:
    """Practice software, named by its label, granted contact details on Dr One."""
    issued = await ok(
        await client.post(
            "/admin/tokens",
            json={"actor_kind": "integration", "label": SOFTWARE_LABEL},
            headers=world.auth("admin"),
        ),
        201,
    )
    await ok(
        await client.put(
            f"/practitioners/{world.practitioner}/grants/{issued['actor_id']}",
            json={"scopes": ["agenda:read", "patients:contact:read"]},
            headers=world.auth("practitioner"),
        )
    )
    return {
        "token_id": issued["token_id"],
        "Authorization": f"Bearer {issued['token']}",
    }


async def test_the_patient_sees_dr_one_and_the_software_by_name_and_never_a_token_id(
    client: TestClient, world: World, services: Services
):
    appointment = (await booked(client, world, paris(WEDNESDAY, "09:00")))["id"]
    software = await the_software(client, world)
    await ok(await client.get(f"/appointments/{appointment}", headers=world.auth("practitioner")))
    agenda = await ok(
        await client.get(
            f"/practitioners/{world.practitioner}/agenda",
            params={"date": WEDNESDAY},
            headers={"Authorization": software["Authorization"]},
        )
    )
    assert agenda["appointments"][0]["patient_name"] == "Alice Test"
    await projected(services)

    answer = await client.get("/me/access-log", headers=world.auth("patient"))
    log = await ok(answer)
    text = await answer.text()

    seen = {(e["actor"], e["resource_type"], e["action"], e["outcome"]) for e in log["entries"]}
    assert ("Dr One", "appointment", "read", "allowed") in seen
    assert (SOFTWARE_LABEL, "agenda", "read", "allowed") in seen
    by_software = next(e for e in log["entries"] if e["actor"] == SOFTWARE_LABEL)
    assert "patient_name" in by_software["fields"]
    # No token id, and no internal id at all, is shown to the patient.
    token_ids = [software["token_id"], *(str(a.token_id) for a in world.actors.values())]
    assert [t for t in token_ids if t in text] == []
    assert UUID_RE.findall(text) == []


async def test_another_patients_reads_do_not_appear_in_my_log(
    client: TestClient, world: World, services: Services
):
    await ok(await client.get(f"/patients/{world.other_patient}", headers=world.auth("admin")))
    await ok(await client.get(f"/patients/{world.patient}", headers=world.auth("admin")))
    await projected(services)
    log = await ok(await client.get("/me/access-log", headers=world.auth("other_patient")))
    assert [(e["actor"], e["resource_type"]) for e in log["entries"]] == [
        ("Carnet administration", "patient")
    ]


async def test_reading_my_access_log_is_itself_recorded(
    client: TestClient, world: World, pool: Any, services: Services
):
    watch = LedgerWatch(pool)
    await watch.mark()

    await ok(await client.get("/me/access-log", headers=world.auth("patient")))

    (entry,) = await watch.new()
    me = world.actors["patient"]
    assert (entry.record.actor_id, entry.record.token_id) == (str(me.id), str(me.token_id))
    assert (entry.record.resource_type, entry.record.action, entry.record.outcome) == (
        "access-log",
        "read",
        "allowed",
    )
    assert entry.record.patient_ids == (str(world.patient),)
    # The next read shows the previous one.
    await projected(services)
    log = await ok(await client.get("/me/access-log", headers=world.auth("patient")))
    assert ("You", "access-log") in {(e["actor"], e["resource_type"]) for e in log["entries"]}


@pytest.mark.parametrize(
    "who",
    [
        "practitioner",
        "staff",
        "integration",
        "admin",
        "analyst",
    ],
)
async def test_a_non_patient_gets_403_and_the_refusal_is_recorded_as_denied(
    client: TestClient, world: World, pool: Any, who: str
):
    watch = LedgerWatch(pool)
    await watch.mark()

    await problem(await client.get("/me/access-log", headers=world.auth(who)), 403)

    (entry,) = await watch.new()
    actor = world.actors[who]
    assert (entry.record.actor_id, entry.record.token_id) == (str(actor.id), str(actor.token_id))
    assert (entry.record.resource_type, entry.record.outcome) == ("access-log", "denied")
    assert entry.record.patient_ids == ()


async def test_a_refused_attempt_on_my_data_shows_as_another_patient_account(
    client: TestClient, world: World, services: Services
):
    # Alice's account tries to book in Bob's name: refused, and Bob is told.
    answer = await client.post(
        "/appointments",
        json={
            "practitioner_id": str(world.practitioner),
            "motive_id": "consultation",
            "start": paris(WEDNESDAY, "09:00"),
            "patient_id": str(world.other_patient),
        },
        headers=world.auth("patient"),
    )
    await problem(answer, 404)
    await projected(services)
    log = await ok(await client.get("/me/access-log", headers=world.auth("other_patient")))
    assert [(e["actor"], e["action"], e["outcome"]) for e in log["entries"]] == [
        ("Another patient account", "create", "not-found")
    ]
