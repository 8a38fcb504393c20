"""Values as of access time: what the log, replayed to each access entry's
`as_of`, says the answer held is exactly what the HTTP answer carried.

The ground truth is the response bodies; the entries are found in the log
(the ledger's own events), by request id."""

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp.test_utils import TestClient

from domain import agenda
from domain.agenda import AgendaDay, Appointment, agenda_day_id
from domain.ledger import LEDGER_ID, AccessRecord
from domain.values import Source
from infra.codec import TypedMapper
from infra.eventstore import EventStore
from infra.http.keys import Services
from infra.ledger import read_chain
from infra.replay import PostgresPointInTime
from services.ports import Metadata
from tests.conftest import FakeClock
from tests.e2e.ledger_support import slots
from tests.e2e.support import WEDNESDAY, ok, paris
from tests.world import World

TZ = "Europe/Paris"


class Calls:
    """Every answer the test got, by request id: what the client saw."""

    def __init__(self, client: TestClient, world: World) -> None:
        self.client, self.world = client, world
        self.bodies: dict[str, Any] = {}

    async def __call__(
        self, method: str, path: str, who: str, status: int = 200, **kwargs: Any
    ) -> Any:
        response = await self.client.request(method, path, headers=self.world.auth(who), **kwargs)
        body = await ok(response, status)
        self.bodies[response.headers["X-Request-Id"]] = body
        return body

    async def book(
        self, who: str, start: str, motive: str = "consultation", patient: object = None
    ) -> Any:
        """Book on Dr One's agenda; the appointment as the answer gave it."""
        body = {"practitioner_id": str(self.world.practitioner), "motive_id": motive}
        body["start"] = start
        if patient is not None:
            body["patient_id"] = str(patient)
        return await self("POST", "/appointments", who, 201, json=body)

    async def grant(self, scopes: list[str]) -> None:
        """Scopes for the practice software on Dr One (no personal data: not ledgered)."""
        software = self.world.actors["integration"].id
        path = f"/practitioners/{self.world.practitioner}/grants/{software}"
        response = await self.client.put(
            path, json={"scopes": scopes}, headers=self.world.auth("practitioner")
        )
        await ok(response)


async def entries_by_request(pool: asyncpg.Pool) -> dict[str, AccessRecord]:
    """The allowed ledger entries by request id, each with its as_of said."""
    return {
        e.record.request_id: e.record.reflecting(e.sequence)
        for e in await read_chain(pool)
        if e.record.outcome == "allowed"
    }


def shown(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: body[f] for f in fields}


def lines_of(body: Any) -> dict[str, dict[str, Any]]:
    """The records an answer carried, by id: one appointment, a list of them, or a patient."""
    if "appointments" in body:
        return {a["id"]: a for a in body["appointments"]}
    return {body["id"]: body}


async def check_every_entry(
    pit: PostgresPointInTime, calls: Calls, entries: dict[str, AccessRecord]
) -> int:
    """Each item of each call's entry: the values at its as_of are what the answer carried."""
    checked = 0
    for request_id, body in calls.bodies.items():
        entry = entries[request_id]
        lines = lines_of(body)
        assert {i.record_id for i in entry.items} >= set(lines), entry
        for item in entry.items:
            if item.record_id not in lines:
                continue  # reschedule: the old appointment changed; the answer is the new one
            values = await pit.values(entry.resource_type, item, entry.as_of, entry.as_of_tx)
            assert values == shown(lines[item.record_id], item.fields), (entry, item)
            checked += 1
    return checked


async def test_values_at_each_entry_are_what_the_answers_carried(
    client: TestClient, world: World, services: Services, pool: asyncpg.Pool, clock: FakeClock
):
    call = Calls(client, world)
    agenda = f"/practitioners/{world.practitioner}/agenda"
    mine = f"/patients/{world.patient}/appointments"
    # The practice software may read the agenda and book, but not see who the patients are.
    await call.grant(["agenda:read", "appointments:write"])
    # Alice books (an offset, not "Z": every answer gives the instant back in UTC);
    # everyone reads.
    first = await call.book("patient", "2026-12-02T10:00:00+01:00")
    await call("GET", f"/appointments/{first['id']}", "patient")
    await call("GET", agenda, "practitioner", params={"date": WEDNESDAY})
    masked = await call("GET", agenda, "integration", params={"date": WEDNESDAY})
    assert masked["appointments"][0]["patient_id"] is None
    await call("GET", mine, "patient")
    before = await call("GET", f"/patients/{world.patient}", "patient")
    # Then her contact details change, the practice software books for her, she
    # cancels the first, reschedules the second, and the practitioner marks one done.
    after = await call(
        "PUT",
        f"/patients/{world.patient}/contact",
        "patient",
        json={"email": "alice@new.example.org", "phone": "+33 6 11 11 11 11"},
    )
    second = await call.book(
        "integration", paris(WEDNESDAY, "14:00"), motive="long", patient=world.patient
    )
    assert second["patient_id"] is None  # masked for the software
    await call("POST", f"/appointments/{first['id']}/cancel", "patient", json={"reason": "ill"})
    moved = await call(
        "POST",
        f"/appointments/{second['id']}/reschedule",
        "patient",
        201,
        json={"start": paris(WEDNESDAY, "16:00")},
    )
    third = await call.book("practitioner", paris(WEDNESDAY, "09:00"), patient=world.patient)
    clock.advance(days=1, hours=2)  # Wednesday 10:00 in Paris: the 09:00 one has started
    await call("POST", f"/appointments/{third['id']}/fulfilled", "practitioner")
    # Read again: every status has moved on since the first reads.
    for who in ("practitioner", "integration"):
        await call("GET", agenda, who, params={"date": WEDNESDAY})
    await call("GET", mine, "patient")
    await call("GET", f"/appointments/{first['id']}", "patient")
    await call("GET", f"/appointments/{moved['id']}", "patient")
    await call("GET", f"/patients/{world.patient}", "patient")

    entries = await entries_by_request(pool)
    pit = PostgresPointInTime(pool)
    assert await check_every_entry(pit, call, entries) >= 25

    # The old appointment of the reschedule: what the change made of it.
    reschedule = next(e for e in entries.values() if moved["id"] in e.record_ids)
    old = next(i for i in reschedule.items if i.record_id == second["id"])
    assert await pit.values("appointment", old, reschedule.as_of) == {
        "status": "cancelled",
        "replaced_by": moved["id"],
        "cancellation_reason": "rescheduled",
    }
    # The contact details as they were at each read.
    read_before = next(
        e for e in entries.values() if e.resource_type == "patient" and e.items and e.as_of
    )
    contact = await pit.contact(str(world.patient), read_before.as_of)
    assert contact == shown(
        before, ("first_name", "last_name", "birth_date", "sex", "email", "phone")
    )
    assert after["email"] == "alice@new.example.org"
    latest = max(e.as_of for e in entries.values())
    assert (await pit.contact(str(world.patient), latest) or {})["email"] == after["email"]


async def test_masked_agenda_reads_rebuild_no_patient_field(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    call = Calls(client, world)
    await call.grant(["agenda:read"])
    await call.book("patient", paris(WEDNESDAY, "11:00"))
    body = await call(
        "GET",
        f"/practitioners/{world.practitioner}/agenda",
        "integration",
        params={"date": WEDNESDAY},
    )
    entry = (await entries_by_request(pool))[next(reversed(call.bodies))]
    (item,) = entry.items
    assert item.patient_id == str(world.patient) and not item.identified
    values = await PostgresPointInTime(pool).values("agenda", item, entry.as_of, entry.as_of_tx)
    assert values == shown(body["appointments"][0], item.fields)
    assert values["status"] == "booked" and values["motive_name"] == "Consultation"
    assert not {"patient_id", "patient_name"} & set(values)


async def test_agenda_values_are_exact_while_other_bookings_land(
    client: TestClient, world: World, pool: asyncpg.Pool
):
    call = Calls(client, world)
    starts = slots()
    wednesday = [next(starts) for _ in range(21)]  # the whole Wednesday, 09:00 to 18:00

    async def bookings() -> None:
        for i, start in enumerate(wednesday):
            who = "patient" if i % 2 else "other_patient"
            body = {
                "practitioner_id": str(world.practitioner),
                "motive_id": "consultation",
                "start": start,
            }
            await ok(await client.post("/appointments", json=body, headers=world.auth(who)), 201)

    async def reads() -> None:
        for _ in range(30):
            # Without the read-your-writes wait: the read model may lag the writes.
            response = await client.get(
                f"/practitioners/{world.practitioner}/agenda",
                params={"date": WEDNESDAY},
                headers={**world.auth("practitioner"), "Carnet-Min-Position": "0"},
            )
            call.bodies[response.headers["X-Request-Id"]] = await ok(response)

    # One read that waits for the read model, so that it knows the practitioner.
    await call(
        "GET",
        f"/practitioners/{world.practitioner}/agenda",
        "practitioner",
        params={"date": WEDNESDAY},
    )
    await asyncio.gather(bookings(), reads(), reads())
    entries = await entries_by_request(pool)
    sizes = {len(b["appointments"]) for b in call.bodies.values()}
    assert len(sizes) > 3, sizes  # the reads did see the day fill up
    pit = PostgresPointInTime(pool)
    for request_id, body in call.bodies.items():
        entry = entries[request_id]
        assert [i.record_id for i in entry.items] == [a["id"] for a in body["appointments"]]
    assert await check_every_entry(pit, call, entries) == sum(
        len(b["appointments"]) for b in call.bodies.values()
    )


async def test_agenda_values_follow_the_read_models_order_not_positions(
    client: TestClient, world: World, services: Services, pool: asyncpg.Pool
):
    """A transaction that began first but commits last: its event has the higher
    position, yet the read model applied it before the bookings that sit below it."""
    call = Calls(client, world)
    first = await call.book("patient", paris(WEDNESDAY, "09:00"))
    repo = services.booking.repo
    appointment = await repo.get(Appointment, UUID(first["id"]))
    assert appointment is not None
    async with pool.acquire() as slow, slow.transaction():
        await slow.execute("SELECT pg_current_xact_id()")  # its xid: below the next ones
        await call.book("other_patient", paris(WEDNESDAY, "10:00"))
        day = await repo.get(AgendaDay, agenda_day_id(world.practitioner, appointment.start, TZ))
        assert day is not None
        agenda.cancel(appointment, day, "slow writer", Source.STAFF)
        mapper = TypedMapper()
        stored = [mapper.to_stored_event(e) for a in (appointment, day) for e in a.collect_events()]
        late = await EventStore.append_on(slow, stored, Metadata("staff", "test"))
    body = await call(
        "GET",
        f"/practitioners/{world.practitioner}/agenda",
        "practitioner",
        params={"date": WEDNESDAY},
    )
    assert [a["status"] for a in body["appointments"]] == ["cancelled", "booked"]
    entry = (await entries_by_request(pool))[next(reversed(call.bodies))]
    assert entry.as_of < late  # the checkpoint is an event below the cancellation…
    pit = PostgresPointInTime(pool)
    for item, line in zip(entry.items, body["appointments"], strict=True):
        # …whose cut in (tx, position) order still holds it
        assert await pit.values("agenda", item, entry.as_of, entry.as_of_tx) == line


async def test_unknown_records_and_resources_give_no_values(pool: asyncpg.Pool, world: World):
    from domain.ledger import Disclosure

    pit = PostgresPointInTime(pool)
    nobody = Disclosure(record_id="00000000-0000-0000-0000-00000000abcd", fields=("status",))
    assert await pit.values("appointment", nobody, 10**6) == {}
    assert await pit.values("agenda", nobody, 10**6, 10**6) == {}
    assert await pit.values("token", nobody, 10**6) == {}
    ledger = Disclosure(record_id=str(LEDGER_ID), fields=("status",))
    assert await pit.values("appointment", ledger, 10**6) == {}
    garbage = Disclosure(record_id="not-a-uuid\x00", fields=("status",))
    assert await pit.values("appointment", garbage, 10**6) == {}
    # A patient before she was registered: unknown then.
    patient = Disclosure(record_id=str(world.patient), fields=("email",))
    assert await pit.values("patient", patient, 1) == {}
    assert await pit.contact(str(world.patient), 1) is None
    assert await pit.contact("nobody", 10**6) is None
