"""Integration scope, with the ledger as witness: software granted on Dr One
that asks for Dr Two's agenda gets a 404 recorded as not-found on Dr Two's
agenda; once its grant or its token is revoked, its next call on Dr One is
refused, and that refusal is recorded too."""

from typing import Any

from aiohttp.test_utils import TestClient

from domain.ledger import AccessRecord
from tests.e2e.ledger_support import LedgerWatch
from tests.e2e.support import WEDNESDAY, ok, paris, problem
from tests.world import World

SOFTWARE = "integration"


async def agenda_of(client: TestClient, world: World, practitioner: Any) -> Any:
    return await client.get(
        f"/practitioners/{practitioner}/agenda",
        params={"date": WEDNESDAY},
        headers=world.auth(SOFTWARE),
    )


async def the_one_entry(watch: LedgerWatch) -> AccessRecord:
    entries = await watch.new()
    assert len(entries) == 1, entries
    return entries[0].record


def by_the_software(record: AccessRecord, world: World) -> None:
    software = world.actors[SOFTWARE]
    assert record.actor_kind == "integration"
    assert record.integration_id == str(software.id)
    assert record.token_id == str(software.token_id)


async def granted(client: TestClient, world: World) -> None:
    await ok(
        await client.put(
            f"/practitioners/{world.practitioner}/grants/{world.actors[SOFTWARE].id}",
            json={"scopes": ["agenda:read"]},
            headers=world.auth("practitioner"),
        )
    )
    await ok(
        await client.post(
            "/appointments",
            json={
                "practitioner_id": str(world.other_practitioner),
                "motive_id": "consultation",
                "start": paris(WEDNESDAY, "09:00"),
                "patient_id": str(world.other_patient),
            },
            headers=world.auth("admin"),
        ),
        201,
    )


async def test_software_granted_on_one_agenda_asking_for_another_is_recorded_as_not_found(
    client: TestClient, world: World, pool: Any
):
    await granted(client, world)
    watch = LedgerWatch(pool)
    await watch.mark()

    answer = await agenda_of(client, world, world.other_practitioner)

    body = await problem(answer, 404, "practitioner_id")
    assert str(world.other_patient) not in str(body)
    record = await the_one_entry(watch)
    by_the_software(record, world)
    assert (record.resource_type, record.action, record.outcome) == ("agenda", "read", "not-found")
    assert record.record_ids == (str(world.other_practitioner),)
    assert record.patient_ids == () and record.fields == ()
    # The granted agenda is still readable, and that read is recorded as allowed.
    await ok(await agenda_of(client, world, world.practitioner))
    allowed = await the_one_entry(watch)
    assert (allowed.outcome, allowed.resource_type) == ("allowed", "agenda")


async def test_after_its_grant_is_revoked_the_softwares_next_call_is_refused_and_recorded(
    client: TestClient, world: World, pool: Any
):
    await granted(client, world)
    await ok(await agenda_of(client, world, world.practitioner))
    await ok(
        await client.delete(
            f"/practitioners/{world.practitioner}/grants/{world.actors[SOFTWARE].id}",
            headers=world.auth("practitioner"),
        )
    )
    watch = LedgerWatch(pool)
    await watch.mark()

    await problem(await agenda_of(client, world, world.practitioner), 404, "practitioner_id")

    record = await the_one_entry(watch)
    by_the_software(record, world)
    assert (record.resource_type, record.outcome) == ("agenda", "not-found")
    assert record.record_ids == (str(world.practitioner),)


async def test_after_its_token_is_revoked_the_softwares_next_call_is_refused_and_recorded_as_denied(
    client: TestClient, world: World, pool: Any
):
    await granted(client, world)
    await ok(await agenda_of(client, world, world.practitioner))
    await ok(
        await client.post(
            f"/tokens/{world.actors[SOFTWARE].token_id}/revoke",
            json={"reason": "contract ended"},
            headers=world.auth("admin"),
        )
    )
    watch = LedgerWatch(pool)
    await watch.mark()

    await problem(await agenda_of(client, world, world.practitioner), 401, "Authorization")

    record = await the_one_entry(watch)
    by_the_software(record, world)
    assert (record.resource_type, record.action, record.outcome) == ("agenda", "read", "denied")
    assert record.record_ids == (str(world.practitioner),)
