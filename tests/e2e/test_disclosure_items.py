"""What one access entry tells an analyst: each record with its patient, whether
that patient was identified, the practitioner and establishment, and what the
request asked for, even when nothing matched; a replay says it is one."""

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from domain.ledger import AccessRecord
from infra.http.keys import Services
from tests.e2e.ledger_support import LedgerWatch, more_actors, settled
from tests.e2e.support import THURSDAY, WEDNESDAY, book, booked, ok, paris
from tests.world import World


async def read_agenda(client: TestClient, world: World, day: str, who: str) -> Any:
    return await ok(
        await client.get(
            f"/practitioners/{world.practitioner}/agenda",
            params={"date": day},
            headers=world.auth(who),
        )
    )


async def last_read(watch: LedgerWatch) -> AccessRecord:
    entries = settled(await watch.new())
    assert len(entries) == 1, entries
    return entries[0].record


async def test_an_agenda_read_pairs_each_appointment_with_its_own_patient(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    alice = await booked(
        client, world, paris(WEDNESDAY, "09:00"), who="admin", patient=world.patient
    )
    bob = await booked(
        client, world, paris(WEDNESDAY, "09:20"), who="admin", patient=world.other_patient
    )
    watch = LedgerWatch(pool)
    await watch.mark()
    await read_agenda(client, world, WEDNESDAY, "practitioner")

    record = await last_read(watch)
    pairs = {(i.record_id, i.patient_id) for i in record.items}
    assert pairs == {(alice["id"], str(world.patient)), (bob["id"], str(world.other_patient))}
    for item in record.items:
        assert item.identified
        assert item.practitioner_id == str(world.practitioner)
        assert item.establishment_id == str(world.establishment)
        assert "patient_name" in item.fields
    assert ("date", WEDNESDAY) in record.selectors
    assert ("practitioner_id", str(world.practitioner)) in record.selectors


async def test_an_empty_agenda_day_still_says_which_practitioner_and_day_were_asked_for(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    watch = LedgerWatch(pool)
    await watch.mark()
    body = await read_agenda(client, world, THURSDAY, "practitioner")
    assert body["appointments"] == []

    record = await last_read(watch)
    assert record.items == ()
    assert dict(record.selectors) == {"date": THURSDAY, "practitioner_id": str(world.practitioner)}


async def test_a_masked_agenda_line_concerns_its_patient_without_identifying_them(
    client: TestClient, world: World, services: Services, pool: asyncpg.Pool
):
    # "reader" holds agenda:read on Dr One, without the contact scope.
    await more_actors(services, world)
    appointment = await booked(client, world, paris(WEDNESDAY, "10:00"))
    watch = LedgerWatch(pool)
    await watch.mark()
    body = await read_agenda(client, world, WEDNESDAY, "reader")
    assert body["appointments"][0]["patient_name"] is None

    record = await last_read(watch)
    (item,) = record.items
    assert (item.record_id, item.patient_id, item.identified) == (
        appointment["id"],
        str(world.patient),
        False,
    )
    assert not {"patient_id", "patient_name"} & set(item.fields)
    assert record.patient_ids == (str(world.patient),)  # concerned, so told

    # Alice is told that the software saw her appointment, and that it did not see who she is.
    await services.read.wait_for(await services.read.store.last_position(), ["access_log"])
    log = await ok(await client.get("/me/access-log", headers=world.auth("patient")))
    by_reader = [e for e in log["entries"] if e["resource_type"] == "agenda"]
    assert [(e["actor"], e["identified"]) for e in by_reader] == [("Agenda Reader Pro", False)]
    assert all(e["identified"] for e in log["entries"] if e["resource_type"] != "agenda")


async def test_an_idempotent_replay_is_marked_and_the_patient_reads_one_creation(
    client: TestClient, world: World, services: Services, pool: asyncpg.Pool
):
    key = {"Idempotency-Key": "alice-once"}
    first = await book(client, world, paris(WEDNESDAY, "11:00"), headers=key)
    assert first.status == 201
    watch = LedgerWatch(pool)
    await watch.mark()
    again = await book(client, world, paris(WEDNESDAY, "11:00"), headers=key)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"

    record = await last_read(watch)
    assert record.replay and record.action == "create"
    assert [i.record_id for i in record.items] == [(await first.json())["id"]]

    await services.read.wait_for(await services.read.store.last_position(), ["access_log"])
    log = await ok(await client.get("/me/access-log", headers=world.auth("patient")))
    mine = [
        (e["action"], e["outcome"])
        for e in log["entries"]
        if e["resource_type"] == "appointment" and e["outcome"] == "allowed"
    ]
    assert sorted(mine) == [("create", "allowed"), ("read", "allowed")]


async def test_an_agenda_read_s_as_of_is_exact_while_bookings_land(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    """The rows read are exactly those of the checkpoint recorded with them.

    The agenda's rows at checkpoint (tx, position) hold the appointments whose
    Booked event comes at or before it in (tx, position) order; a read racing
    with bookings must name exactly those."""
    starts = [paris(WEDNESDAY, f"{h:02d}:{m:02d}") for h in (14, 15, 16, 17) for m in (0, 20, 40)]
    watch = LedgerWatch(pool)
    await watch.mark()

    async def bookings() -> None:
        for start in starts:
            await booked(client, world, start, who="admin", patient=world.other_patient)

    async def readers() -> list[set[str]]:
        seen = []
        for _ in range(12):
            body = await read_agenda(client, world, WEDNESDAY, "practitioner")
            seen.append({a["id"] for a in body["appointments"]})
        return seen

    _, seen = await asyncio.gather(bookings(), readers())
    reads = [e.record for e in settled(await watch.new()) if e.record.resource_type == "agenda"]
    assert len(reads) == len(seen) == 12
    for record, shown in zip(reads, seen, strict=True):
        assert record.as_of_tx > 0
        held = await pool.fetch(
            """SELECT originator_id::text FROM carnet.events
            WHERE topic = 'domain.agenda:Appointment.Booked'
              AND (tx, position) <= ($1::text::xid8, $2)""",
            str(record.as_of_tx),
            record.as_of,
        )
        assert {i.record_id for i in record.items} == shown == {r[0] for r in held}


async def test_hostile_selectors_are_kept_escaped_and_bounded(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    # A malformed practitioner id is refused before the query is read, so
    # whatever the query holds reaches the refusal's entry.
    watch = LedgerWatch(pool)
    await watch.mark()
    hostile = "\x00\x1b[31m\ud7ffé" + "x" * 300  # the request line holds at most 8 KiB
    params = {f"k{n}": hostile for n in range(20)} | {"date": "\x00"}
    response = await client.get(
        "/practitioners/%00nope/agenda", params=params, headers=world.auth("practitioner")
    )
    assert response.status == 404
    (entry,) = await watch.new()
    record = entry.record
    assert record.outcome == "not-found"
    assert 0 < len(record.selectors) <= 16
    for name, value in record.selectors:
        assert name.isprintable() and value.isprintable()
        assert len(value) <= 200
    assert ("date", "\\x00") in record.selectors


async def test_a_patient_s_appointment_list_identifies_its_patient_and_names_each_controller(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    appointment = await booked(client, world, paris(WEDNESDAY, "09:40"))
    watch = LedgerWatch(pool)
    await watch.mark()
    await ok(
        await client.get(f"/patients/{world.patient}/appointments", headers=world.auth("patient"))
    )
    record = await last_read(watch)
    (item,) = record.items
    assert (item.record_id, item.patient_id, item.identified) == (
        appointment["id"],
        str(world.patient),
        True,
    )
    assert (item.practitioner_id, item.establishment_id) == (
        str(world.practitioner),
        str(world.establishment),
    )
