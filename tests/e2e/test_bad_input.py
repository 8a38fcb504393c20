"""Bad requests: a 4xx problem naming the field, no trace, and no change at all."""

import json
from typing import Any

import pytest

from tests.e2e.support import WEDNESDAY, log_position, paris, problem

NINE = paris(WEDNESDAY, "09:00")
MISSING = object()


def booking(**changes: Any) -> bytes:
    """A valid booking body for the world's practitioner, with some fields changed."""
    body: dict[str, Any] = {"practitioner_id": "{practitioner}", "motive_id": "consultation"}
    body["start"] = NINE
    for name, value in changes.items():
        if value is MISSING:
            del body[name]
        else:
            body[name] = value
    return json.dumps(body).encode()


# (case, body, status, field)
BOOKINGS = [
    ("malformed json", b'{"practitioner_id": ', 400, "body"),
    ("empty body", b"", 400, "body"),
    ("array instead of object", b"[]", 400, "body"),
    ("id of the wrong type", booking(practitioner_id=42), 400, "practitioner_id"),
    ("id that is not a uuid", booking(practitioner_id="dr-one"), 400, "practitioner_id"),
    ("start of the wrong type", booking(start=1764662400), 400, "start"),
    ("start that is not a time", booking(start="tomorrow at nine"), 400, "start"),
    ("motive that is not a slug", booking(motive_id="Consultation!"), 400, "motive_id"),
    ("unknown field", booking(colour="blue"), 400, "colour"),
    ("missing start", booking(start=MISSING), 400, "start"),
    ("missing practitioner", booking(practitioner_id=MISSING), 400, "practitioner_id"),
    ("start without offset", booking(start="2026-12-02T09:00:00"), 400, "start"),
    ("end without offset", booking(end="2026-12-02T09:20:00"), 400, "end"),
    ("start in year 9999", booking(start="9999-12-31T23:50:00Z"), 400, "start"),
    ("start at the end of time", booking(start="9999-12-31T23:59:59-12:00"), 400, "start"),
    ("start in year 1", booking(start="0001-01-01T00:00:00+14:00"), 400, "start"),
    ("unknown practitioner", booking(practitioner_id="{random}"), 404, "practitioner_id"),
    ("unknown motive", booking(motive_id="acupuncture"), 404, "motive_id"),
    ("foreign patient", booking(patient_id="{other_patient}"), 404, "patient_id"),
    ("unknown patient", booking(patient_id="{random}"), 404, "patient_id"),
]


@pytest.fixture
async def unchanged(services):
    """Assert, after the test, that the event log did not grow."""
    before = await log_position(services)
    yield
    assert await log_position(services) == before


def _fill(raw: bytes, world: Any) -> bytes:
    return (
        raw.replace(b"{practitioner}", str(world.practitioner).encode())
        .replace(b"{other_patient}", str(world.other_patient).encode())
        .replace(b"{random}", b"8b6a2c8e-3f5d-4c1b-9e0a-7d2f1c3b4a59")
    )


@pytest.mark.parametrize(
    ("body", "status", "field"), [c[1:] for c in BOOKINGS], ids=[c[0] for c in BOOKINGS]
)
async def test_a_bad_booking_is_refused_naming_its_field(
    client, world, unchanged, body, status, field
):
    response = await client.post(
        "/appointments",
        data=_fill(body, world),
        headers={**world.auth("patient"), "Content-Type": "application/json"},
    )

    await problem(response, status, field)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_json_is_refused(client, world, unchanged, content_type):
    headers = world.auth("patient")
    if content_type:
        headers["Content-Type"] = content_type

    response = await client.post("/appointments", data=_fill(booking(), world), headers=headers)

    body = await problem(response, 415, "Content-Type")
    assert body["type"].endswith("/unsupported-media-type")


async def test_a_body_too_large_is_refused(client, world, unchanged):
    huge = booking(reason="x" * 70_000)
    response = await client.post(
        "/appointments",
        data=_fill(huge, world),
        headers={**world.auth("patient"), "Content-Type": "application/json"},
    )

    await problem(response, 413, "body")


async def test_an_idempotency_key_longer_than_255_characters_is_refused(client, world, unchanged):
    response = await client.post(
        "/appointments",
        data=_fill(booking(), world),
        headers={
            **world.auth("patient"),
            "Content-Type": "application/json",
            "Idempotency-Key": "k" * 256,
        },
    )

    await problem(response, 400, "Idempotency-Key")


@pytest.fixture
async def appointment(client, world) -> dict[str, Any]:
    created = await client.post(
        "/appointments",
        data=_fill(booking(), world),
        headers={**world.auth("patient"), "Content-Type": "application/json"},
    )
    assert created.status == 201
    found: dict[str, Any] = await created.json()
    return found


async def test_a_cancellation_reason_over_500_characters_is_refused(
    client, world, services, appointment
):
    before = await log_position(services)

    response = await client.post(
        f"/appointments/{appointment['id']}/cancel",
        json={"reason": "r" * 501},
        headers=world.auth("patient"),
    )

    await problem(response, 400, "reason")
    assert await log_position(services) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "start"),
        ({"start": "2026-12-02T10:00:00"}, "start"),
        ({"start": "3000-01-01T00:00:00Z"}, "start"),
        ({"start": NINE, "practitioner_id": "x"}, "practitioner_id"),
    ],
    ids=["missing start", "naive start", "year 3000", "unknown field"],
)
async def test_a_bad_reschedule_is_refused_and_the_appointment_stays(
    client, world, services, appointment, body, field
):
    before = await log_position(services)

    response = await client.post(
        f"/appointments/{appointment['id']}/reschedule", json=body, headers=world.auth("patient")
    )

    await problem(response, 400, field)
    assert await log_position(services) == before
    reread = await client.get(f"/appointments/{appointment['id']}", headers=world.auth("patient"))
    assert (await reread.json())["status"] == "booked"


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ({"from": WEDNESDAY, "to": WEDNESDAY}, 400, "motive_id"),
        ({"motive_id": "consultation", "to": WEDNESDAY}, 400, "from"),
        ({"motive_id": "consultation", "from": "next week", "to": WEDNESDAY}, 400, "from"),
        ({"motive_id": "consultation", "from": WEDNESDAY, "to": "9999-12-31"}, 400, "to"),
        ({"motive_id": "consultation", "from": WEDNESDAY, "to": WEDNESDAY, "x": "1"}, 400, "x"),
        ({"motive_id": "consultation", "from": WEDNESDAY, "to": "2027-01-02"}, 422, "to"),
        ({"motive_id": "consultation", "from": WEDNESDAY, "to": "2026-12-01"}, 422, "to"),
        ({"motive_id": "acupuncture", "from": WEDNESDAY, "to": WEDNESDAY}, 404, "motive_id"),
    ],
    ids=[
        "missing motive",
        "missing from",
        "from not a date",
        "to in year 9999",
        "unknown parameter",
        "range over 31 days",
        "range backwards",
        "unknown motive",
    ],
)
async def test_a_bad_availability_query_is_refused_naming_its_parameter(
    client, world, query, status, field
):
    response = await client.get(
        f"/practitioners/{world.practitioner}/availability",
        params=query,
        headers=world.auth("patient"),
    )

    await problem(response, status, field)


async def test_a_repeated_query_parameter_is_refused(client, world):
    response = await client.get(
        f"/practitioners/{world.practitioner}/agenda?date={WEDNESDAY}&date=2026-12-03",
        headers=world.auth("practitioner"),
    )

    await problem(response, 400, "date")


@pytest.mark.parametrize(
    ("hours", "field"),
    [
        ([{"weekday": 0, "start": "09:00:00"}], "hours[0].end"),
        ([{"weekday": "monday", "start": "09:00:00", "end": "12:00:00"}], "hours[0].weekday"),
        ([{"weekday": 7, "start": "09:00:00", "end": "12:00:00"}], "hours[0].weekday"),
        ([{"weekday": 0, "start": "09:00:00", "end": "12:00:00", "room": 2}], "hours[0].room"),
    ],
    ids=["missing end", "weekday as a name", "weekday out of range", "unknown nested field"],
)
async def test_a_nested_error_names_the_nested_field(client, world, unchanged, hours, field):
    response = await client.put(
        f"/practitioners/{world.practitioner}/hours",
        json={"hours": hours},
        headers=world.auth("practitioner"),
    )

    await problem(response, 400, field)


async def test_an_unknown_route_and_a_wrong_method_answer_problems(client, world, unchanged):
    missing = await client.get("/appointment", headers=world.auth("patient"))
    await problem(missing, 404)

    wrong = await client.delete("/appointments", headers=world.auth("patient"))
    await problem(wrong, 405)
    assert "POST" in wrong.headers["Allow"]


async def test_opening_hours_with_an_offset_are_refused_not_crashed_on(client, services, world):
    before = await log_position(services)
    response = await client.put(
        f"/practitioners/{world.practitioner}/hours",
        json={"hours": [{"weekday": 0, "start": "09:00:00Z", "end": "12:00:00"}]},
        headers=world.auth("admin"),
    )
    await problem(response, 400, "hours[0].start")
    assert await log_position(services) == before


async def test_a_chunked_body_too_large_is_refused_like_any_other(client, world, unchanged):
    async def chunks():
        yield b'{"reason": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    response = await client.post(
        "/appointments",
        data=chunks(),
        headers={**world.auth("patient"), "Content-Type": "application/json"},
    )

    body = await problem(response, 413, "body")
    assert body["type"].endswith("/too-large")
