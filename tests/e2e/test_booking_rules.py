"""The practice's booking rules, as a client meets them: 422 naming the field."""

import pytest

from tests.conftest import FakeClock
from tests.e2e.support import (
    TUESDAY,
    WEDNESDAY,
    book,
    booked,
    free_starts,
    log_position,
    ok,
    paris,
    problem,
)


async def test_a_booking_needs_an_hour_of_notice(client, world, services, clock: FakeClock):
    # It is 08:30 in Paris on Tuesday.
    clock.advance(minutes=30)
    before = await log_position(services)

    refused = await book(client, world, paris(TUESDAY, "09:20"))

    assert (await problem(refused, 422, "start"))["type"].endswith("/too-late")
    assert await log_position(services) == before
    assert (await free_starts(client, world, TUESDAY, TUESDAY))[0] == "2026-12-01T08:40:00Z"
    await booked(client, world, paris(TUESDAY, "09:40"))


async def test_exactly_one_hour_of_notice_is_enough(client, world):
    created = await booked(client, world, paris(TUESDAY, "09:00"))
    assert created["start"] == "2026-12-01T08:00:00Z"


async def test_bookings_open_ninety_days_ahead(client, world, services):
    # Ninety days after Tuesday 08:00 is Monday 1 March 2027, 08:00.
    await booked(client, world, paris("2027-02-26", "17:00"))
    before = await log_position(services)

    refused = await book(client, world, paris("2027-03-01", "09:00"))

    assert (await problem(refused, 422, "start"))["type"].endswith("/beyond-horizon")
    assert await log_position(services) == before
    assert await free_starts(client, world, "2027-03-01", "2027-03-02") == []


@pytest.mark.parametrize(
    ("day", "hhmm"),
    [
        (WEDNESDAY, "08:40"),  # before opening
        (WEDNESDAY, "11:50"),  # runs past noon
        (WEDNESDAY, "12:30"),  # lunch
        (WEDNESDAY, "18:00"),  # after closing
        ("2026-12-05", "10:00"),  # Saturday
    ],
)
async def test_a_booking_outside_opening_hours_is_refused(client, world, services, day, hhmm):
    before = await log_position(services)

    response = await book(client, world, paris(day, hhmm))

    assert (await problem(response, 422, "start"))["type"].endswith("/outside-opening-hours")
    assert await log_position(services) == before


async def test_an_end_that_does_not_match_the_motive_is_refused(client, world, services):
    start = paris(WEDNESDAY, "09:00")
    before = await log_position(services)

    response = await book(client, world, start, end=paris(WEDNESDAY, "09:30"))

    assert (await problem(response, 422, "end"))["type"].endswith("/wrong-duration")
    assert await log_position(services) == before
    created = await booked(client, world, start, end=paris(WEDNESDAY, "09:20"))
    assert created["end"] == "2026-12-02T08:20:00Z"


async def test_a_desk_only_motive_is_refused_online_but_booked_by_the_desk(client, world):
    start = paris(WEDNESDAY, "09:00")

    refused = await book(client, world, start, motive="phone-only")
    assert (await problem(refused, 422, "motive_id"))["type"].endswith("/not-bookable-online")
    assert await free_starts(client, world, WEDNESDAY, WEDNESDAY, motive="phone-only") == []

    created = await booked(
        client, world, start, who="staff", motive="phone-only", patient=world.patient
    )
    assert (created["source"], created["end"]) == ("staff", "2026-12-02T08:15:00Z")


async def test_nine_in_paris_is_eight_utc_in_winter_and_seven_in_summer(
    client, world, clock: FakeClock
):
    # Sixty days on, late March is inside the horizon; clocks change on Sunday 28.
    clock.advance(days=60)
    free = await free_starts(client, world, "2027-03-26", "2027-03-29")
    friday = [s for s in free if s.startswith("2027-03-26")]
    monday = [s for s in free if s.startswith("2027-03-29")]
    assert friday[0] == "2027-03-26T08:00:00Z"  # 09:00 CET
    assert monday[0] == "2027-03-29T07:00:00Z"  # 09:00 CEST
    assert len(friday) == len(monday) == len(free) // 2  # nothing at the weekend

    # A client may send local time with its offset; the API answers in UTC.
    summer = await booked(client, world, "2027-03-29T09:00:00+02:00")
    assert summer["start"] == "2027-03-29T07:00:00Z"
    same_instant = await book(client, world, "2027-03-29T08:00:00+01:00", who="other_patient")
    await problem(same_instant, 409, "start")

    # 07:00Z is 09:00 in summer but only 08:00 in winter: closed on the Friday.
    winter_early = await book(client, world, "2027-03-26T07:00:00Z")
    await problem(winter_early, 422, "start")
    winter = await booked(client, world, "2027-03-26T09:00:00+01:00")
    assert winter["start"] == "2027-03-26T08:00:00Z"
    assert "2027-03-26T08:00:00Z" not in await free_starts(
        client, world, "2027-03-26", "2027-03-26"
    )


async def test_an_absence_blocks_bookings_and_hides_its_slots(client, world):
    response = await client.post(
        f"/practitioners/{world.practitioner}/absences",
        json={"start": paris(WEDNESDAY, "09:00"), "end": paris(WEDNESDAY, "12:00")},
        headers=world.auth("practitioner"),
    )
    await ok(response, 201)

    refused = await book(client, world, paris(WEDNESDAY, "10:00"))

    assert (await problem(refused, 422, "start"))["type"].endswith("/during-absence")
    free = await free_starts(client, world, WEDNESDAY, WEDNESDAY)
    assert free[0] == "2026-12-02T13:00:00Z"  # 14:00 in Paris
