"""Book-to-reveal: a practice that could book any patient id on its own agenda
could then read that patient's name from the agenda. So the practice
(practitioner, desk, granted software) books only a patient it already knows:
one who booked at that establishment before, was registered by its desk, or
consented. Any other patient id gets exactly the answer an unknown id gets.

In the test world Bob was registered by the platform and has never booked
anywhere: no practice knows him.
"""

import uuid
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from infra.http.keys import Services
from services.ports import Metadata
from tests.e2e.ledger_support import LedgerWatch, settled
from tests.e2e.support import WALK_IN, WEDNESDAY, book, log_position, ok, paris, problem
from tests.world import World

PRACTICE = ["practitioner", "staff", "integration"]
# Headers that differ on every answer whatever it says.
PER_REQUEST = {"x-request-id", "date"}


async def grant_software(client: TestClient, world: World) -> None:
    """Software that may book on Dr One's agenda and read patients' names there."""
    await ok(
        await client.put(
            f"/practitioners/{world.practitioner}/grants/{world.actors['integration'].id}",
            json={"scopes": ["agenda:read", "appointments:write", "patients:contact:read"]},
            headers=world.auth("practitioner"),
        )
    )


async def everything_said(response: ClientResponse) -> tuple[Any, ...]:
    headers = sorted((k, v) for k, v in response.headers.items() if k.lower() not in PER_REQUEST)
    return response.status, headers, await response.read()


async def agenda_text(client: TestClient, world: World, who: str) -> str:
    response = await client.get(
        f"/practitioners/{world.practitioner}/agenda",
        params={"date": WEDNESDAY},
        headers=world.auth(who),
    )
    assert response.status == 200, await response.text()
    return await response.text()


@pytest.mark.parametrize("who", PRACTICE)
async def test_the_practice_booking_a_stranger_gets_the_unknown_patient_answer(
    client: TestClient, world: World, services: Services, pool: Any, who: str
):
    await grant_software(client, world)
    before = await log_position(services)
    watch = LedgerWatch(pool)
    await watch.mark()

    stranger = await book(
        client, world, paris(WEDNESDAY, "09:00"), who=who, patient=world.other_patient
    )

    await problem(stranger, 404, "patient_id")
    (entry,) = settled(await watch.new())
    assert entry.record.outcome == "not-found"  # ledgered and counted as a miss
    assert entry.record.patient_ids == (str(world.other_patient),)
    nobody = await book(client, world, paris(WEDNESDAY, "09:00"), who=who, patient=uuid.uuid4())
    assert await everything_said(stranger) == await everything_said(nobody)
    assert await log_position(services) == before  # nothing appended
    for reader in PRACTICE:
        shown = await agenda_text(client, world, reader)
        assert "Bob" not in shown and str(world.other_patient) not in shown


@pytest.mark.parametrize("who", PRACTICE)
async def test_a_patient_books_for_themself_unknown_and_then_the_practice_may_book_them(
    client: TestClient, world: World, who: str
):
    await grant_software(client, world)
    await problem(
        await book(client, world, paris(WEDNESDAY, "10:00"), who=who, patient=world.other_patient),
        404,
    )
    # Bob books for himself where no one knows him; then cancels (any status counts).
    own = await ok(await book(client, world, paris(WEDNESDAY, "09:00"), who="other_patient"), 201)
    cancelled = await client.post(
        f"/appointments/{own['id']}/cancel",
        json={"reason": "oops"},
        headers=world.auth("other_patient"),
    )
    await ok(cancelled)

    made = await ok(
        await book(client, world, paris(WEDNESDAY, "10:00"), who=who, patient=world.other_patient),
        201,
    )
    assert "Bob" in await agenda_text(client, world, who)
    assert made["start"] == paris(WEDNESDAY, "10:00")


async def test_a_patient_registered_by_the_desk_may_be_booked_by_that_practice_only(
    client: TestClient, world: World
):
    carl = await ok(
        await client.post(
            "/patients",
            json=WALK_IN,
            headers=world.auth("staff"),
        ),
        201,
    )
    await ok(
        await book(
            client, world, paris(WEDNESDAY, "09:00"), who="practitioner", patient=carl["id"]
        ),
        201,
    )
    # Dr Two's practice has never seen Carl: to it he does not exist.
    elsewhere = await book(
        client,
        world,
        paris(WEDNESDAY, "09:00"),
        who="other_practitioner",
        practitioner=world.other_practitioner,
        patient=carl["id"],
    )
    nobody = await book(
        client,
        world,
        paris(WEDNESDAY, "09:00"),
        who="other_practitioner",
        practitioner=world.other_practitioner,
        patient=uuid.uuid4(),
    )
    await problem(elsewhere, 404, "patient_id")
    assert await everything_said(elsewhere) == await everything_said(nobody)


async def test_a_patient_who_consented_may_be_booked_by_that_establishment_only(
    client: TestClient, world: World, services: Services
):
    bob = world.actors["other_patient"]
    await services.booking.consent_to_bookings(
        bob,
        Metadata(actor_kind="patient", actor_id=str(bob.id)),
        patient_id=bob.id,
        establishment_id=world.establishment,
    )
    await ok(await book(client, world, paris(WEDNESDAY, "09:00"), who="staff", patient=bob.id), 201)
    elsewhere = await book(
        client,
        world,
        paris(WEDNESDAY, "09:00"),
        who="other_practitioner",
        practitioner=world.other_practitioner,
        patient=bob.id,
    )
    await problem(elsewhere, 404, "patient_id")


async def test_a_patients_consent_through_http_lets_that_desk_book_them(client, world):
    bob = world.other_patient
    refused = await book(client, world, paris(WEDNESDAY, "09:00"), who="staff", patient=bob)
    assert refused.status == 404

    consent = await client.post(
        f"/patients/{bob}/consents",
        json={"establishment_id": str(world.establishment)},
        headers=world.auth("other_patient"),
    )
    assert consent.status == 200, await consent.text()

    again = await book(client, world, paris(WEDNESDAY, "09:00"), who="staff", patient=bob)
    assert again.status == 201, await again.text()


async def test_nobody_but_the_patient_consents_for_them(client, world):
    for who in ("patient", "staff", "practitioner", "integration"):
        response = await client.post(
            f"/patients/{world.other_patient}/consents",
            json={"establishment_id": str(world.establishment)},
            headers=world.auth(who),
        )
        assert response.status == 404, (who, await response.text())
