"""Object-level authorization through HTTP: someone else's object must look
exactly like one that does not exist (the BOLA attack of DESIGN.md), and no
token means 401."""

import uuid
from typing import Any

import pytest
from aiohttp import ClientResponse

from tests.e2e.support import WEDNESDAY, booked, log_position, ok, paris, problem

UNKNOWN = str(uuid.UUID("0b7e1c4a-5d2f-4e8b-9a3c-6f1d2e3c4b5a"))
MALFORMED = "12345"
OUTSIDERS = ["other_patient", "other_practitioner", "other_staff", "integration", "analyst"]


async def answer(response: ClientResponse) -> tuple[int, str, bytes]:
    return response.status, response.content_type, await response.read()


async def assert_identical_404s(responses: list[ClientResponse]) -> None:
    """Same status, same content type, same body, byte for byte."""
    answers = [await answer(r) for r in responses]
    assert answers[0][0] == 404, answers[0]
    assert all(a == answers[0] for a in answers), answers
    await problem(responses[0], 404)


@pytest.fixture
async def alices(client, world) -> dict[str, Any]:
    """Alice's appointment with Dr One, at the first establishment."""
    return await booked(client, world, paris(WEDNESDAY, "09:00"))


ACTIONS: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("POST", "/cancel", {"reason": "not mine"}),
    ("POST", "/reschedule", {"start": paris(WEDNESDAY, "11:00")}),
    ("POST", "/noshow", None),
    ("POST", "/fulfilled", None),
]


@pytest.mark.parametrize("outsider", OUTSIDERS)
async def test_someone_elses_appointment_looks_exactly_like_a_missing_one(
    client, world, services, alices, outsider
):
    before = await log_position(services)
    for method, suffix, body in ACTIONS:
        responses = [
            await client.request(
                method, f"/appointments/{id_}{suffix}", json=body, headers=world.auth(outsider)
            )
            for id_ in (alices["id"], UNKNOWN, MALFORMED)
        ]
        await assert_identical_404s(responses)
    assert await log_position(services) == before
    still = await client.get(f"/appointments/{alices['id']}", headers=world.auth("patient"))
    assert (await ok(still))["status"] == "booked"


@pytest.mark.parametrize("insider", ["patient", "practitioner", "staff", "admin"])
async def test_the_appointment_is_visible_to_those_it_concerns(client, world, alices, insider):
    response = await client.get(f"/appointments/{alices['id']}", headers=world.auth(insider))

    assert (await ok(response))["id"] == alices["id"]


async def test_an_unknown_and_a_malformed_practitioner_agenda_look_alike(client, world):
    responses = [
        await client.get(
            f"/practitioners/{id_}/agenda",
            params={"date": WEDNESDAY},
            headers=world.auth("practitioner"),
        )
        for id_ in (UNKNOWN, MALFORMED)
    ]
    await assert_identical_404s(responses)


@pytest.mark.parametrize("outsider", ["other_practitioner", "other_staff", "patient"])
async def test_another_practitioners_agenda_looks_like_an_unknown_one(client, world, outsider):
    responses = [
        await client.get(
            f"/practitioners/{id_}/agenda",
            params={"date": WEDNESDAY},
            headers=world.auth(outsider),
        )
        for id_ in (world.practitioner, UNKNOWN, MALFORMED)
    ]
    await assert_identical_404s(responses)


async def test_the_practice_reads_its_own_agenda(client, world, alices):
    for who in ("practitioner", "staff"):
        response = await client.get(
            f"/practitioners/{world.practitioner}/agenda",
            params={"date": WEDNESDAY},
            headers=world.auth(who),
        )
        assert [a["id"] for a in (await ok(response))["appointments"]] == [alices["id"]]


async def test_another_patients_profile_looks_exactly_like_a_missing_one(client, world, services):
    before = await log_position(services)
    for method, suffix, body in (
        ("GET", "", None),
        ("PUT", "/contact", {"email": "mallory@example.org", "phone": "+33 6 11 11 11 11"}),
    ):
        responses = [
            await client.request(
                method, f"/patients/{id_}{suffix}", json=body, headers=world.auth("patient")
            )
            for id_ in (world.other_patient, UNKNOWN, MALFORMED)
        ]
        await assert_identical_404s(responses)
    assert await log_position(services) == before
    own = await client.get(f"/patients/{world.patient}", headers=world.auth("patient"))
    assert (await ok(own))["first_name"] == "Alice"


async def test_booking_for_another_patient_looks_like_booking_for_nobody(client, world, services):
    before = await log_position(services)
    responses = [
        await client.post(
            "/appointments",
            json={
                "practitioner_id": str(world.practitioner),
                "motive_id": "consultation",
                "start": paris(WEDNESDAY, "09:00"),
                "patient_id": id_,
            },
            headers=world.auth("patient"),
        )
        for id_ in (str(world.other_patient), UNKNOWN)
    ]
    await assert_identical_404s(responses)
    assert await log_position(services) == before


async def test_the_desk_of_another_establishment_cannot_book_here(client, world, services):
    before = await log_position(services)

    response = await client.post(
        "/appointments",
        json={
            "practitioner_id": str(world.practitioner),
            "motive_id": "consultation",
            "start": paris(WEDNESDAY, "09:00"),
            "patient_id": str(world.patient),
        },
        headers=world.auth("other_staff"),
    )

    await problem(response, 404)
    assert await log_position(services) == before


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, None),
        ("Bearer ", None),
        ("Basic YWxpY2U6c2VjcmV0", None),
        ("Bearer carnet_not-a-real-token", "invalid_token"),
    ],
    ids=["no header", "empty bearer", "basic scheme", "unknown token"],
)
async def test_a_request_without_a_valid_token_is_401(
    client, world, services, alices, authorization, error
):
    headers = {"Authorization": authorization} if authorization else {}
    before = await log_position(services)

    responses = [
        await client.get(f"/appointments/{alices['id']}", headers=headers),
        await client.get(f"/appointments/{UNKNOWN}", headers=headers),
        await client.post(
            "/appointments",
            json={
                "practitioner_id": str(world.practitioner),
                "motive_id": "consultation",
                "start": paris(WEDNESDAY, "10:00"),
            },
            headers=headers,
        ),
    ]

    for response in responses:
        await problem(response, 401, "Authorization")
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    # Existing and missing ids are indistinguishable before authentication too.
    assert await answer(responses[0]) == await answer(responses[1])
    assert await log_position(services) == before


async def test_public_routes_need_no_token(client):
    for path in ("/healthz", "/readyz", "/openapi.json"):
        response = await client.get(path)
        assert response.status == 200, path
