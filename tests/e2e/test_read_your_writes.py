"""Read routes answer from read models; a client that names its last write's
position reads that write."""

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from infra.http.app import create_app
from infra.http.keys import Services
from infra.workers import background
from tests.e2e.support import WEDNESDAY, ok, paris, problem
from tests.world import World


@pytest.fixture
async def plain(services: Services, pool) -> Any:
    """A client that sends only the headers a test gives it."""
    async with background(pool, None), TestClient(TestServer(create_app(services))) as client:
        yield client


async def test_a_client_that_books_then_lists_its_appointments_sees_the_booking(
    plain: TestClient, world: World
):
    for i in range(9):  # 09:00 to 11:40, every slot of the morning
        start = paris(WEDNESDAY, f"{9 + i // 3:02d}:{(i % 3) * 20:02d}")
        booked = await plain.post(
            "/appointments",
            json={
                "practitioner_id": str(world.practitioner),
                "motive_id": "consultation",
                "start": start,
            },
            headers=world.auth("patient"),
        )
        appointment = await ok(booked, 201)
        position = booked.headers["Carnet-Position"]
        listed = await plain.get(
            f"/patients/{world.patient}/appointments",
            headers={**world.auth("patient"), "Carnet-Min-Position": position},
        )
        ids = [a["id"] for a in (await ok(listed))["appointments"]]
        assert appointment["id"] in ids
        assert len(ids) == i + 1
        # The same through the query parameter, on the practitioner's agenda.
        agenda = await plain.get(
            f"/practitioners/{world.practitioner}/agenda",
            params={"date": WEDNESDAY, "min_position": position},
            headers=world.auth("practitioner"),
        )
        entries = (await ok(agenda))["appointments"]
        mine = next(e for e in entries if e["id"] == appointment["id"])
        assert mine["patient_name"] == "Alice Test" and mine["motive_name"] == "Consultation"


async def test_the_patient_view_carries_practitioner_address_and_status(
    client: TestClient, world: World
):
    booked = await ok(
        await client.post(
            "/appointments",
            json={
                "practitioner_id": str(world.practitioner),
                "motive_id": "consultation",
                "start": paris(WEDNESDAY, "10:00"),
            },
            headers=world.auth("patient"),
        ),
        201,
    )
    await ok(
        await client.post(
            f"/appointments/{booked['id']}/cancel",
            json={"reason": "flu"},
            headers=world.auth("patient"),
        )
    )
    listed = await ok(
        await client.get(f"/patients/{world.patient}/appointments", headers=world.auth("patient"))
    )
    (entry,) = listed["appointments"]
    assert (entry["practitioner_name"], entry["city"], entry["address"], entry["status"]) == (
        "Dr One",
        "Paris",
        "1 rue A",
        "cancelled",
    )


async def test_another_patients_appointments_look_like_an_unknown_patient(
    client: TestClient, world: World
):
    foreign = await client.get(
        f"/patients/{world.other_patient}/appointments", headers=world.auth("patient")
    )
    unknown = await client.get(
        "/patients/00000000-0000-0000-0000-00000000000a/appointments", headers=world.auth("patient")
    )
    assert foreign.status == unknown.status == 404
    assert await foreign.read() == await unknown.read()


async def test_search_finds_free_slots_by_specialty_and_city(client: TestClient, world: World):
    found = await ok(
        await client.get(
            "/availability",
            params={
                "specialty": "General Practice",
                "city": "paris",
                "from": WEDNESDAY,
                "to": WEDNESDAY,
            },
            headers=world.auth("patient"),
        )
    )
    assert [o["practitioner_id"] for o in found["offers"]] == [str(world.practitioner)]
    (offer,) = found["offers"]
    assert offer["motive_id"] == "consultation" and offer["city"] == "Paris"
    assert offer["slots"][0]["start"] == paris(WEDNESDAY, "09:00")
    nobody = await ok(
        await client.get(
            "/availability",
            params={"specialty": "dentistry", "city": "Paris", "from": WEDNESDAY, "to": WEDNESDAY},
            headers=world.auth("patient"),
        )
    )
    assert nobody["offers"] == []


async def test_the_directory_lists_practitioners_and_establishments(
    client: TestClient, world: World
):
    dentists = await ok(
        await client.get(
            "/practitioners", params={"specialty": "dentistry"}, headers=world.auth("patient")
        )
    )
    assert [p["id"] for p in dentists["practitioners"]] == [str(world.other_practitioner)]
    in_lyon = await ok(
        await client.get("/establishments", params={"city": "Lyon"}, headers=world.auth("patient"))
    )
    assert [e["id"] for e in in_lyon["establishments"]] == [str(world.other_establishment)]


async def test_a_malformed_position_is_refused_naming_it(plain: TestClient, world: World):
    answer = await plain.get(
        f"/practitioners/{world.practitioner}",
        headers={**world.auth("patient"), "Carnet-Min-Position": "ten"},
    )
    await problem(answer, 400, "Carnet-Min-Position")


async def test_a_read_model_that_cannot_catch_up_answers_503_with_retry_after(
    services: Services, world: World
):
    # No projection runs here: the read model never reaches the position.
    services.read.max_wait = 0.2
    head = await services.read.store.last_position()
    async with TestClient(TestServer(create_app(services))) as client:
        answer = await client.get(
            f"/practitioners/{world.practitioner}",
            headers={**world.auth("patient"), "Carnet-Min-Position": str(head)},
        )
        await problem(answer, 503, "Carnet-Min-Position")
        assert answer.headers["Retry-After"] == "1"
