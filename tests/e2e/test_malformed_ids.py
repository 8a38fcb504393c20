"""A malformed id in a path is, to the caller, one more id that does not exist.

Ids wrapped in braces, or holding dots, once never reached their route:
aiohttp's own 404 answered, unrecorded and uncounted, so an enumeration
could hide among them. Each now gets the unknown id's answer, is ledgered
as a not-found attempt, and counts towards the enumeration defence.
"""

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from infra.http.app import create_app
from infra.http.keys import Services
from infra.workers import background
from tests.e2e.ledger_support import LedgerWatch
from tests.e2e.support import WATCHFUL, WEDNESDAY, paris, problem
from tests.world import World

# Fixed, not random: every xdist worker must collect the same test ids.
UNKNOWN = "99ade8e1-f9f5-42ef-986f-b11462aaa59e"
MALFORMED = [
    f"%7B{UNKNOWN}%7D",  # {uuid}
    f"%7B{UNKNOWN}",
    "a..b",
    "..",
    "x/..",
    "..%2F..%2Fadmin",
    "%2e%2e",
    "x%00y",
    "%FF%FE",
    "not-a-uuid",
]


@pytest.fixture
async def guarded(services: Services, pool: Any) -> Any:
    async with background(pool, None), TestClient(TestServer(create_app(services, WATCHFUL))) as c:
        yield c


def _shape(body: dict[str, Any]) -> tuple[Any, ...]:
    return body["type"], body["title"], body["status"], body["detail"], body["field"]


async def _get(client: TestClient, raw_path: str, world: World) -> Any:
    # Built as sent: joining URLs would resolve the dot segments client-side.
    url = URL(str(client.make_url("")).rstrip("/") + raw_path, encoded=True)
    return await client.session.get(url, headers=world.auth("patient"))


@pytest.mark.parametrize("raw", MALFORMED)
async def test_a_malformed_appointment_id_gets_the_unknown_ids_answer_and_is_ledgered(
    guarded, world, services, raw
):
    unknown = await problem(await _get(guarded, f"/appointments/{UNKNOWN}", world), 404)
    watch = LedgerWatch(services.read.pool)
    await watch.mark()

    response = await _get(guarded, f"/appointments/{raw}", world)

    body = await problem(response, 404)
    assert _shape(body) == _shape(unknown)
    entries = await watch.new()
    assert [e.record.outcome for e in entries] == ["not-found"], entries
    assert entries[0].record.resource_type == "appointment"
    assert entries[0].record.actor_id == str(world.actors["patient"].id)


async def test_malformed_ids_count_towards_the_enumeration_defence(guarded, world):
    statuses = []
    for n in range(WATCHFUL.enumeration_misses + 1):
        response = await _get(guarded, f"/appointments/%7B{uuid.uuid4()}%7D{n}", world)
        statuses.append(response.status)

    assert statuses[: WATCHFUL.enumeration_misses - 1] == [404] * (WATCHFUL.enumeration_misses - 1)
    assert 429 in statuses


async def test_a_malformed_id_under_another_resource_names_that_resource(guarded, world):
    unknown = await problem(await _get(guarded, f"/patients/{UNKNOWN}/appointments", world), 404)

    response = await _get(guarded, f"/patients/%7B{UNKNOWN}%7D/appointments", world)

    assert _shape(await problem(response, 404)) == _shape(unknown)


async def test_an_unknown_path_still_answers_a_plain_problem(guarded, world):
    response = await _get(guarded, "/no/such/thing", world)

    await problem(response, 404)


@pytest.mark.parametrize("raw", ["x%00y", "%7Bx%00%7D", "%ED%A0%80", "%1B%5B31m"])
async def test_a_hostile_id_in_the_ledger_does_not_break_reading_the_ledger(
    guarded, world, services, raw
):
    await problem(await _get(guarded, f"/appointments/{raw}", world), 404)

    response = await guarded.get("/ledger", headers=world.auth("analyst"))

    assert response.status == 200, await response.text()
    entries = (await response.json())["entries"]
    assert any(e["outcome"] == "not-found" for e in entries)
    assert all("\x00" not in i for e in entries for i in e["record_ids"])


@pytest.mark.parametrize(
    "spelling",
    [
        lambda i: f"%7B{i}%7D",
        lambda i: f"urn:uuid:{i}",
        lambda i: i.replace("-", ""),
        lambda i: f"{i}%20",
    ],
    ids=["braces", "urn", "no hyphens", "trailing space"],
)
async def test_a_known_id_spelled_otherwise_is_not_found(guarded, world, spelling):
    booked = await guarded.post(
        "/appointments",
        json={
            "practitioner_id": str(world.practitioner),
            "motive_id": "consultation",
            "start": paris(WEDNESDAY, "09:00"),
        },
        headers=world.auth("patient"),
    )
    appointment = (await booked.json())["id"]
    assert (await _get(guarded, f"/appointments/{appointment.upper()}", world)).status == 200

    response = await _get(guarded, f"/appointments/{spelling(appointment)}", world)

    await problem(response, 404, "appointment_id")
