"""The 2020 attack: an ordinary patient account walking other people's
appointment ids finds nothing, is throttled, and loses its token."""

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from domain.ledger import LEDGER_ID
from infra.http.app import create_app
from infra.http.keys import Services
from infra.http.throttle import ThrottlePolicy
from infra.workers import background
from tests.e2e.support import THURSDAY, WATCHFUL, WEDNESDAY, ok, paris
from tests.world import META, ROOT, World


@pytest.fixture
async def guarded(services: Services, pool: Any) -> Any:
    async with background(pool, None), TestClient(TestServer(create_app(services, WATCHFUL))) as c:
        yield c


async def foreign_appointments(client: TestClient, world: World, n: int) -> list[str]:
    ids = []
    for i in range(n):
        day, slot = (WEDNESDAY, i) if i < 9 else (THURSDAY, i - 9)
        made = await ok(
            await client.post(
                "/appointments",
                json={
                    "practitioner_id": str(world.practitioner),
                    "motive_id": "consultation",
                    "start": paris(day, f"{9 + slot // 3:02d}:{(slot % 3) * 20:02d}"),
                    "patient_id": str(world.other_patient),
                },
                headers=world.auth("admin"),
            ),
            201,
        )
        ids.append(made["id"])
    return ids


async def test_walking_foreign_and_random_ids_finds_nothing_and_is_stopped(
    guarded: TestClient, world: World, services: Services
):
    # Bob's appointments exist; Alice's account asks for them and for random
    # ids, thousands of times, as in 2020.
    bobs = await foreign_appointments(guarded, world, 18)
    walk = [bobs[i % len(bobs)] if i % 3 == 0 else str(uuid.uuid4()) for i in range(2000)]
    statuses: list[int] = []
    bodies: list[bytes] = []
    for appointment_id in walk:
        answer = await guarded.get(f"/appointments/{appointment_id}", headers=world.auth("patient"))
        statuses.append(answer.status)
        bodies.append(await answer.read())

    first_refusal = next(i for i, s in enumerate(statuses) if s != 404)
    assert first_refusal == WATCHFUL.enumeration_misses - 1  # the 20th miss is refused
    assert statuses[first_refusal] == 429
    assert set(statuses[first_refusal + 1 :]) == {401}  # the token is suspended
    # No foreign data in any response: not Bob's id, not his appointments'.
    leaked = [
        b
        for b in bodies
        if str(world.other_patient).encode() in b or any(a.encode() in b for a in bobs)
    ]
    assert leaked == []
    topics = [
        r[0]
        for r in await services.read.pool.fetch(
            "SELECT topic FROM carnet.events WHERE originator_id = $1 ORDER BY originator_version",
            world.actors["patient"].token_id,
        )
    ]
    assert [t.rsplit(".", 1)[-1] for t in topics] == ["Issued", "EnumerationSuspected", "Suspended"]


async def test_an_admin_can_lift_the_suspension(guarded: TestClient, world: World):
    for _ in range(WATCHFUL.enumeration_misses):
        await guarded.get(f"/appointments/{uuid.uuid4()}", headers=world.auth("patient"))
    me = f"/patients/{world.patient}"
    assert (await guarded.get(me, headers=world.auth("patient"))).status == 401
    token_id = world.actors["patient"].token_id
    await ok(
        await guarded.post(f"/admin/tokens/{token_id}/lift-suspension", headers=world.auth("admin"))
    )
    assert (await guarded.get(me, headers=world.auth("patient"))).status == 200


async def test_an_actor_going_too_fast_gets_429_with_retry_after(services: Services, world: World):
    policy = ThrottlePolicy(rate_per_second=2, burst=5)
    async with TestClient(TestServer(create_app(services, policy))) as client:
        answers = await asyncio.gather(
            *(
                client.get(f"/patients/{world.patient}", headers=world.auth("patient"))
                for _ in range(12)
            )
        )
        statuses = sorted(a.status for a in answers)
        assert statuses.count(200) == 5 and statuses.count(429) == 7
        throttled = next(a for a in answers if a.status == 429)
        assert int(throttled.headers["Retry-After"]) >= 1
        assert throttled.content_type == "application/problem+json"
        # Another actor is not slowed down by this one.
        other = await client.get(
            f"/patients/{world.other_patient}", headers=world.auth("other_patient")
        )
        assert other.status == 200


# A bucket of 5 that does not refill within a test: the 6th request is over.
TIGHT = ThrottlePolicy(rate_per_second=0.001, burst=5, enumeration_misses=10**9)


async def ledger_size(services: Services) -> int:
    size: int = await services.read.pool.fetchval(
        "SELECT count(*) FROM carnet.events WHERE originator_id = $1", LEDGER_ID
    )
    return size


async def test_a_revoked_token_hammering_an_audited_route_is_throttled_and_stops_costing_entries(
    services: Services, world: World
):
    token_id = world.actors["patient"].token_id
    assert token_id is not None
    await services.credentials.revoke_token(ROOT, META, token_id, "stolen")
    async with TestClient(TestServer(create_app(services, TIGHT))) as client:
        before = await ledger_size(services)
        statuses = []
        for _ in range(30):
            answer = await client.get(f"/patients/{world.patient}", headers=world.auth("patient"))
            statuses.append(answer.status)
            if answer.status == 429:
                assert int(answer.headers["Retry-After"]) >= 1
                assert answer.content_type == "application/problem+json"
        # Each 401 wrote a `denied` entry; past the burst, 429s write none.
        assert statuses == [401] * TIGHT.burst + [429] * (30 - TIGHT.burst)
        assert await ledger_size(services) - before == TIGHT.burst


async def test_an_active_token_past_its_rate_writes_no_more_entries(
    services: Services, world: World
):
    async with TestClient(TestServer(create_app(services, TIGHT))) as client:
        before = await ledger_size(services)
        statuses = [
            (await client.get(f"/patients/{world.patient}", headers=world.auth("patient"))).status
            for _ in range(30)
        ]
        assert statuses == [200] * TIGHT.burst + [429] * (30 - TIGHT.burst)
        assert await ledger_size(services) - before == TIGHT.burst


async def test_an_admins_misses_are_flagged_but_never_suspend_it(
    guarded: TestClient, world: World, services: Services
):
    # An admin may see every object, so its misses are ids that exist nowhere;
    # suspending it would lock out administration until someone used the CLI.
    misses = [
        (await guarded.get(f"/appointments/{uuid.uuid4()}", headers=world.auth("admin"))).status
        for _ in range(WATCHFUL.enumeration_misses)
    ]
    assert misses == [404] * (WATCHFUL.enumeration_misses - 1) + [429]
    flagged = await guarded.get(f"/appointments/{uuid.uuid4()}", headers=world.auth("admin"))
    assert flagged.status == 404
    assert (
        await guarded.get(f"/patients/{world.patient}", headers=world.auth("admin"))
    ).status == 200
    topics = [
        r[0].rsplit(".", 1)[-1]
        for r in await services.read.pool.fetch(
            "SELECT topic FROM carnet.events WHERE originator_id = $1 ORDER BY originator_version",
            world.actors["admin"].token_id,
        )
    ]
    assert topics == ["Issued", "EnumerationSuspected"]
