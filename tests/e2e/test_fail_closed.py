"""Fail-closed: while ledger writes fail (and only they: the rest of the
database works), routes carrying personal data answer 503 with Retry-After
and disclose nothing; once the ledger can be written again the same calls
succeed and are recorded."""

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from domain.ledger import LEDGER_ID
from tests.e2e.ledger_support import LedgerWatch
from tests.e2e.support import WEDNESDAY, booked, log_position, ok, paris, problem
from tests.world import World

REFUSE = f"""
CREATE FUNCTION carnet.test_refuse_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger writes are refused by the test';
END $$;
CREATE TRIGGER test_refuse_ledger BEFORE INSERT ON carnet.events
    FOR EACH ROW WHEN (NEW.originator_id = '{LEDGER_ID}'::uuid)
    EXECUTE FUNCTION carnet.test_refuse_ledger();
"""
ALLOW = """
DROP TRIGGER IF EXISTS test_refuse_ledger ON carnet.events;
DROP FUNCTION IF EXISTS carnet.test_refuse_ledger();
"""


class LedgerSwitch:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def break_it(self) -> None:
        await self.pool.execute(REFUSE)

    async def mend_it(self) -> None:
        await self.pool.execute(ALLOW)


@pytest.fixture
async def ledger_switch(pool: asyncpg.Pool) -> AsyncIterator[LedgerSwitch]:
    switch = LedgerSwitch(pool)
    try:
        yield switch
    finally:
        await switch.mend_it()


def personal_data(world: World, appointment_id: str) -> list[str]:
    return [
        str(world.patient),
        appointment_id,
        "Alice",
        "Test",
        "alice@example.org",
        "+33 6 00 00 00 00",
        "1980-01-01",
    ]


def reads(world: World, appointment_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("patient", f"/appointments/{appointment_id}", {}),
        ("patient", f"/patients/{world.patient}", {}),
        ("practitioner", f"/practitioners/{world.practitioner}/agenda", {"date": WEDNESDAY}),
    ]


async def test_without_a_writable_ledger_personal_data_routes_answer_503_and_disclose_nothing(
    client: TestClient, world: World, pool: Any, ledger_switch: LedgerSwitch
):
    appointment = (await booked(client, world, paris(WEDNESDAY, "09:00")))["id"]
    watch = LedgerWatch(pool)
    await watch.mark()
    await ledger_switch.break_it()

    for who, path, params in reads(world, appointment):
        answer = await client.get(path, params=params, headers=world.auth(who))
        body = await problem(answer, 503)
        assert int(answer.headers["Retry-After"]) >= 1, path
        text = await answer.text()
        assert [x for x in personal_data(world, appointment) if x in text] == [], (path, body)
    # The rest of the database works: a write that is not personal data goes through.
    await ok(
        await client.post(
            "/establishments",
            json={"name": "Cabinet C", "address": "3 rue C", "city": "Lille"},
            headers=world.auth("admin"),
        ),
        201,
    )
    assert await watch.new() == []

    await ledger_switch.mend_it()
    for who, path, params in reads(world, appointment):
        answer = await client.get(path, params=params, headers=world.auth(who))
        assert str(world.patient) in await answer.text(), path
        await ok(answer)
    recorded = await watch.new()
    assert [(e.record.resource_type, e.record.outcome) for e in recorded] == [
        ("appointment", "allowed"),
        ("patient", "allowed"),
        ("agenda", "allowed"),
    ]
    assert [e.record.record_ids for e in recorded] == [
        (appointment,),
        (str(world.patient),),
        (appointment,),
    ]


async def test_a_refusal_is_not_answered_either_while_the_ledger_cannot_record_it(
    client: TestClient, world: World, ledger_switch: LedgerSwitch
):
    await ledger_switch.break_it()
    answer = await client.get(f"/patients/{world.other_patient}", headers=world.auth("patient"))
    await problem(answer, 503)


async def test_while_the_ledger_cannot_be_written_a_booking_changes_nothing(
    client: TestClient, world: World, services: Any, ledger_switch: LedgerSwitch
):
    before = await log_position(services)
    await ledger_switch.break_it()
    answer = await _try_booking(client, world, paris(WEDNESDAY, "10:00"), "patient")
    await problem(answer, 503)
    assert await log_position(services) == before


# Refuses only the entries that say a call succeeded: the write-ahead of
# today's code (and every refusal) still goes in, the change's own entry not.
REFUSE_ALLOWED = """
CREATE FUNCTION carnet.test_refuse_allowed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'allowed entries are refused by the test';
END $$;
CREATE TRIGGER test_refuse_allowed BEFORE INSERT ON carnet.events
    FOR EACH ROW WHEN (NEW.topic LIKE '%AccessRecorded%'
        AND position('"outcome":"allowed"' in convert_from(NEW.state, 'UTF8')) > 0)
    EXECUTE FUNCTION carnet.test_refuse_allowed();
"""
ALLOW_ALLOWED = """
DROP TRIGGER IF EXISTS test_refuse_allowed ON carnet.events;
DROP FUNCTION IF EXISTS carnet.test_refuse_allowed();
"""


async def _try_booking(client: TestClient, world: World, start: str, who: str) -> Any:
    body = {"practitioner_id": str(world.practitioner), "motive_id": "consultation", "start": start}
    return await client.post("/appointments", json=body, headers=world.auth(who))


async def _events_since(pool: Any, position: int) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT originator_id::text, topic FROM carnet.events WHERE position > $1 "
        "ORDER BY position",
        position,
    )
    return [(r[0], r[1]) for r in rows]


async def test_a_write_whose_entry_cannot_be_written_leaves_neither_the_change_nor_an_entry(
    client: TestClient, world: World, services: Any, pool: Any
):
    """The change's events and its access entry are one statement: no change
    stands without the entry that says who made it, and no entry says a
    change was tried that then stood unrecorded."""
    slot = paris(WEDNESDAY, "11:00")
    before = await log_position(services)
    await pool.execute(REFUSE_ALLOWED)
    try:
        answer = await _try_booking(client, world, slot, "patient")
        await problem(answer, 503)
        assert [t for _, t in await _events_since(pool, before) if "Appointment" in t] == []
        assert [t for _, t in await _events_since(pool, before) if "AgendaDay" in t] == []
    finally:
        await pool.execute(ALLOW_ALLOWED)
    # The slot was never taken: the same booking now goes through, recorded.
    watch = LedgerWatch(pool)
    await watch.mark()
    made = await booked(client, world, slot)
    recorded = [e.record for e in await watch.new()]
    assert [r.outcome for r in recorded if made["id"] in r.record_ids][:1] == ["allowed"]


async def test_a_change_and_its_entry_commit_in_one_transaction(
    client: TestClient, world: World, services: Any, pool: Any
):
    before = await log_position(services)
    watch = LedgerWatch(pool)
    await watch.mark()
    made = await booked(client, world, paris(WEDNESDAY, "11:20"))
    rows = await pool.fetch(
        "SELECT originator_id::text, topic, tx::text FROM carnet.events WHERE position > $1",
        before,
    )
    change = {r[2] for r in rows if r[0] == made["id"]}
    assert len(change) == 1, rows
    with_it = [r[1] for r in rows if r[2] in change and "AccessRecorded" in r[1]]
    assert len(with_it) == 1, rows
    # No write-ahead entry is left: the entry with the change says it was made.
    assert [e.record.outcome for e in await watch.new() if made["id"] in e.record.record_ids][
        :1
    ] == ["allowed"]
    assert "attempted" not in [e.record.outcome for e in await LedgerWatch(pool).new()]


async def test_a_write_refused_by_a_rule_changes_nothing_and_is_recorded_as_refused(
    client: TestClient, world: World, services: Any, pool: Any
):
    slot = paris(WEDNESDAY, "11:40")
    await booked(client, world, slot)
    before = await log_position(services)
    watch = LedgerWatch(pool)
    await watch.mark()
    answer = await _try_booking(client, world, slot, "other_patient")
    await problem(answer, 409)
    recorded = [e.record for e in await watch.new()]
    assert [(r.action, r.outcome) for r in recorded] == [("create", "refused")]
    assert recorded[0].patient_ids == (str(world.other_patient),)
    # Only the entry went in: no change.
    assert [t for _, t in await _events_since(pool, before) if "AccessRecorded" not in t] == []
