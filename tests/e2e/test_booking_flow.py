"""Booking, cancelling, rescheduling and closing appointments, through HTTP."""

from tests.conftest import FakeClock
from tests.e2e.support import (
    THURSDAY,
    WEDNESDAY,
    agenda,
    book,
    booked,
    free_starts,
    log_position,
    ok,
    paris,
    problem,
)


async def test_a_patient_books_a_free_slot_and_reads_it_back(client, world):
    response = await book(client, world, paris(WEDNESDAY, "09:00"))
    created = await ok(response, 201)

    assert created["status"] == "booked"
    assert created["source"] == "patient"
    assert created["patient_id"] == str(world.patient)
    assert created["establishment_id"] == str(world.establishment)
    assert (created["start"], created["end"]) == ("2026-12-02T08:00:00Z", "2026-12-02T08:20:00Z")
    assert response.headers["Location"] == f"/appointments/{created['id']}"
    assert int(response.headers["Carnet-Position"]) > 0

    read = await client.get(response.headers["Location"], headers=world.auth("patient"))
    assert await ok(read) == created
    assert [a["id"] for a in await agenda(client, world, WEDNESDAY)] == [created["id"]]
    free = await free_starts(client, world, WEDNESDAY, WEDNESDAY)
    assert "2026-12-02T08:00:00Z" not in free
    assert "2026-12-02T08:20:00Z" in free


async def test_second_booking_of_a_taken_slot_is_refused(client, world, services):
    await booked(client, world, paris(WEDNESDAY, "09:00"))
    before = await log_position(services)

    # Another patient wants 09:10, which overlaps the 09:00-09:20 booking.
    response = await book(client, world, paris(WEDNESDAY, "09:10"), who="other_patient")

    body = await problem(response, 409, "start")
    assert body["type"].endswith("/slot-taken")
    assert await log_position(services) == before
    assert len(await agenda(client, world, WEDNESDAY)) == 1


async def test_a_cancelled_time_is_free_for_someone_else(client, world):
    first = await booked(client, world, paris(WEDNESDAY, "09:00"))

    response = await client.post(
        f"/appointments/{first['id']}/cancel",
        json={"reason": "  feeling better  "},
        headers=world.auth("patient"),
    )
    cancelled = await ok(response)
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancellation_reason"] == "feeling better"

    reread = await client.get(f"/appointments/{first['id']}", headers=world.auth("patient"))
    assert (await ok(reread))["status"] == "cancelled"
    assert await agenda(client, world, WEDNESDAY) == []
    assert "2026-12-02T08:00:00Z" in await free_starts(client, world, WEDNESDAY, WEDNESDAY)
    again = await booked(client, world, paris(WEDNESDAY, "09:00"), who="other_patient")
    assert again["start"] == first["start"]


async def test_cancelling_twice_is_refused_and_changes_nothing(client, world, services):
    first = await booked(client, world, paris(WEDNESDAY, "09:00"))
    url = f"/appointments/{first['id']}/cancel"
    await ok(await client.post(url, json={}, headers=world.auth("patient")))
    before = await log_position(services)

    response = await client.post(url, json={"reason": "again"}, headers=world.auth("patient"))

    body = await problem(response, 422, "status")
    assert body["type"].endswith("/invalid-transition")
    assert await log_position(services) == before


async def test_rescheduling_to_another_day_replaces_the_appointment_atomically(client, world):
    # Alice holds Wednesday 09:00 and moves it to Thursday 10:00.
    old = await booked(client, world, paris(WEDNESDAY, "09:00"))
    response = await client.post(
        f"/appointments/{old['id']}/reschedule",
        json={"start": paris(THURSDAY, "10:00")},
        headers=world.auth("patient"),
    )
    new = await ok(response, 201)
    assert response.headers["Location"] == f"/appointments/{new['id']}"

    # The new appointment says what it replaces; the old one, what replaced it.
    assert new["id"] != old["id"]
    assert (new["status"], new["replaces"], new["start"]) == (
        "booked",
        old["id"],
        "2026-12-03T09:00:00Z",
    )
    old_now = await ok(
        await client.get(f"/appointments/{old['id']}", headers=world.auth("patient"))
    )
    assert (old_now["status"], old_now["replaced_by"]) == ("cancelled", new["id"])
    assert old_now["cancellation_reason"] == "rescheduled"

    # Exactly one booked appointment remains, on Thursday; Wednesday is empty.
    assert await agenda(client, world, WEDNESDAY) == []
    assert [a["id"] for a in await agenda(client, world, THURSDAY)] == [new["id"]]

    # The old time is free again: it is offered, and Bob can take it.
    assert old["start"] in await free_starts(client, world, WEDNESDAY, WEDNESDAY)
    await booked(client, world, paris(WEDNESDAY, "09:00"), who="other_patient")


async def test_rescheduling_within_the_day_may_overlap_the_old_time(client, world):
    old = await booked(client, world, paris(WEDNESDAY, "09:00"))

    # 09:10-09:30 overlaps 09:00-09:20, which this very move releases.
    response = await client.post(
        f"/appointments/{old['id']}/reschedule",
        json={"start": paris(WEDNESDAY, "09:10")},
        headers=world.auth("practitioner"),
    )

    new = await ok(response, 201)
    assert (new["replaces"], new["source"]) == (old["id"], "practitioner")
    day = await agenda(client, world, WEDNESDAY)
    assert [(a["id"], a["status"]) for a in day] == [(new["id"], "booked")]


async def test_rescheduling_onto_a_taken_slot_changes_nothing(client, world, services):
    mine = await booked(client, world, paris(WEDNESDAY, "09:00"))
    await booked(client, world, paris(WEDNESDAY, "10:00"), who="other_patient")
    before = await log_position(services)

    response = await client.post(
        f"/appointments/{mine['id']}/reschedule",
        json={"start": paris(WEDNESDAY, "10:00")},
        headers=world.auth("patient"),
    )

    await problem(response, 409, "start")
    assert await log_position(services) == before
    still = await ok(await client.get(f"/appointments/{mine['id']}", headers=world.auth("patient")))
    assert (still["status"], still["replaced_by"]) == ("booked", None)
    assert len(await agenda(client, world, WEDNESDAY)) == 2


async def test_a_cancelled_appointment_cannot_be_rescheduled(client, world):
    old = await booked(client, world, paris(WEDNESDAY, "09:00"))
    url = f"/appointments/{old['id']}"
    await ok(await client.post(f"{url}/cancel", json={}, headers=world.auth("patient")))

    response = await client.post(
        f"{url}/reschedule",
        json={"start": paris(WEDNESDAY, "11:00")},
        headers=world.auth("patient"),
    )

    await problem(response, 422, "status")
    assert await agenda(client, world, WEDNESDAY) == []


async def test_no_show_and_fulfilled_are_marked_only_after_the_start(
    client, world, clock: FakeClock
):
    missed = await booked(client, world, paris(WEDNESDAY, "09:00"))
    seen = await booked(client, world, paris(WEDNESDAY, "09:20"), who="other_patient")
    noshow = f"/appointments/{missed['id']}/noshow"
    fulfilled = f"/appointments/{seen['id']}/fulfilled"

    # Tuesday 08:00: neither has started.
    await problem(await client.post(noshow, headers=world.auth("practitioner")), 422, "status")
    await problem(await client.post(fulfilled, headers=world.auth("staff")), 422, "status")

    # Wednesday 09:25 in Paris: both have started.
    clock.advance(hours=25, minutes=25)
    marked = await ok(await client.post(noshow, headers=world.auth("practitioner")))
    assert marked["status"] == "noshow"
    done = await ok(await client.post(fulfilled, headers=world.auth("staff")))
    assert done["status"] == "fulfilled"

    # An outcome is final, and patients never record one.
    await problem(
        await client.post(f"/appointments/{missed['id']}/fulfilled", headers=world.auth("admin")),
        422,
        "status",
    )
    mine = await booked(client, world, paris(WEDNESDAY, "11:00"))
    clock.advance(hours=2)
    await problem(
        await client.post(f"/appointments/{mine['id']}/noshow", headers=world.auth("patient")), 403
    )


async def test_patients_cannot_cancel_within_four_hours_but_the_practice_can(
    client, world, services, clock: FakeClock
):
    at_nine = await booked(client, world, paris(WEDNESDAY, "09:00"))
    at_twenty_past = await booked(client, world, paris(WEDNESDAY, "09:20"))
    at_forty = await booked(client, world, paris(WEDNESDAY, "09:40"))

    # Wednesday 05:10 in Paris: 09:00 is 3 h 50 away, 09:20 is 4 h 10 away.
    clock.advance(hours=21, minutes=10)
    before = await log_position(services)
    for action, body in (("cancel", {}), ("reschedule", {"start": paris(WEDNESDAY, "11:00")})):
        refused = await client.post(
            f"/appointments/{at_nine['id']}/{action}", json=body, headers=world.auth("patient")
        )
        assert (await problem(refused, 422, "appointment_id"))["type"].endswith("/too-late")
    assert await log_position(services) == before

    # Just outside the window the patient still may.
    await ok(
        await client.post(
            f"/appointments/{at_twenty_past['id']}/cancel", json={}, headers=world.auth("patient")
        )
    )
    # Inside it, the practitioner and the desk may.
    for who, appointment in (("practitioner", at_nine), ("staff", at_forty)):
        done = await client.post(
            f"/appointments/{appointment['id']}/cancel",
            json={"reason": "the patient phoned"},
            headers=world.auth(who),
        )
        assert (await ok(done))["status"] == "cancelled"
    assert await agenda(client, world, WEDNESDAY) == []
