"""The 2020 scenario, with the access ledger as witness: a patient account
walks thousands of foreign and random appointment ids, finds nothing, is
throttled and suspended, and every single attempt is in the ledger, naming
the id it asked for; the analyst finds them all, and that search is recorded."""

import uuid
from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from infra.http.app import create_app
from infra.http.keys import Services
from infra.ledger import read_chain
from infra.workers import background
from tests.e2e.ledger_support import slots
from tests.e2e.support import WATCHFUL, ok
from tests.world import World

WALK = 2000


@pytest.fixture
async def guarded(services: Services, pool: Any) -> Any:
    async with background(pool, None), TestClient(TestServer(create_app(services, WATCHFUL))) as c:
        yield c


async def bobs_appointments(client: TestClient, world: World, n: int) -> list[str]:
    free = slots(day=1)
    return [
        (
            await ok(
                await client.post(
                    "/appointments",
                    json={
                        "practitioner_id": str(world.practitioner),
                        "motive_id": "consultation",
                        "start": next(free),
                        "patient_id": str(world.other_patient),
                    },
                    headers=world.auth("admin"),
                ),
                201,
            )
        )["id"]
        for _ in range(n)
    ]


async def test_every_attempt_of_an_enumerating_patient_is_in_the_ledger_naming_the_id_asked_for(
    guarded: TestClient, world: World, services: Services, pool: Any
):
    bobs = await bobs_appointments(guarded, world, 12)
    walk = [bobs[i % len(bobs)] if i % 3 == 0 else str(uuid.uuid4()) for i in range(WALK)]
    before = len(await read_chain(pool))

    statuses: list[int] = []
    bodies: list[bytes] = []
    for appointment_id in walk:
        answer = await guarded.get(f"/appointments/{appointment_id}", headers=world.auth("patient"))
        statuses.append(answer.status)
        bodies.append(await answer.read())

    # Only 404s, then one 429, then refusals of the suspended token.
    stop = WATCHFUL.enumeration_misses - 1
    assert set(statuses[:stop]) == {404}
    assert statuses[stop] == 429
    assert set(statuses[stop + 1 :]) == {401}
    # No foreign data in any response.
    secrets = [str(world.other_patient), "Bob", "bob@example.org", "+33 6", *bobs]
    leaked = [b for b in bodies if any(x.encode() in b for x in secrets)]
    assert leaked == []

    # Every attempt is in the ledger, in order, naming the id it asked for.
    token = world.actors["patient"].token_id
    entries = (await read_chain(pool))[before:]
    assert len(entries) == WALK
    assert [e.record.record_ids for e in entries] == [(i,) for i in walk]
    assert {(e.record.token_id, e.record.actor_id) for e in entries} == {
        (str(token), str(world.patient))
    }
    assert {(e.record.resource_type, e.record.action) for e in entries} == {("appointment", "read")}
    # The 20th miss was looked up (not found) before the 429 answered it.
    outcomes = [e.record.outcome for e in entries]
    assert outcomes == ["not-found"] * (stop + 1) + ["denied"] * (WALK - stop - 1)
    # Nothing was disclosed: no patient, no fields.
    assert all(e.record.patient_ids == () and e.record.fields == () for e in entries)

    # The analyst finds them all by token id…
    found = await ok(
        await guarded.get(
            "/ledger",
            params={"token_id": str(token), "limit": "5000"},
            headers=world.auth("analyst"),
        )
    )
    assert [e["record_ids"] for e in found["entries"]] == [[i] for i in walk]
    assert Counter(e["outcome"] for e in found["entries"]) == Counter(outcomes)
    # …and that search is itself in the ledger, naming every entry it showed.
    search = (await read_chain(pool))[-1].record
    analyst = world.actors["analyst"]
    assert (search.actor_id, search.token_id) == (str(analyst.id), str(analyst.token_id))
    assert (search.resource_type, search.action, search.outcome) == (
        "access-log",
        "search",
        "allowed",
    )
    assert list(search.record_ids) == [f"ledger:{e['sequence']}" for e in found["entries"]]
