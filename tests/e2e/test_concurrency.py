"""Races through HTTP: many clients, one slot; repeats of one Idempotency-Key."""

import asyncio
import dataclasses
from collections import Counter
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from infra.http.app import create_app
from services.booking import BookingService
from tests.e2e.support import (
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

NINE = paris(WEDNESDAY, "09:00")


async def test_fifty_concurrent_bookings_of_one_slot_give_exactly_one_appointment(client, world):
    # Fifty requests for Wednesday 09:00, half from the desk for Alice, half from Bob.
    requests = [
        book(client, world, NINE, who="staff", patient=world.patient)
        if i % 2
        else book(client, world, NINE, who="other_patient")
        for i in range(50)
    ]
    responses = await asyncio.gather(*requests)

    assert Counter(r.status for r in responses) == {201: 1, 409: 49}
    for refused in (r for r in responses if r.status == 409):
        await problem(refused, 409, "start")
    winner = await ok(next(r for r in responses if r.status == 201), 201)
    day = await agenda(client, world, WEDNESDAY)
    assert [a["id"] for a in day] == [winner["id"]]
    assert winner["start"] not in await free_starts(client, world, WEDNESDAY, WEDNESDAY)


async def test_concurrent_bookings_of_distinct_slots_never_lose_or_invent_one(client, world):
    # Nine free slots of one morning, all asked for at once: they race on one
    # agenda day. A loser retries; one that keeps losing is told to try again
    # (409), and must then hold nothing.
    starts = [paris(WEDNESDAY, f"{h:02d}:{m:02d}") for h in (9, 10, 11) for m in (0, 20, 40)]

    responses = await asyncio.gather(*(book(client, world, s) for s in starts))

    won = {(await ok(r, 201))["id"] for r in responses if r.status == 201}
    for refused in (r for r in responses if r.status != 201):
        assert (await problem(refused, 409))["type"].endswith("/conflict")
    assert won, "at least the first writer wins"
    assert {a["id"] for a in await agenda(client, world, WEDNESDAY)} == won


async def test_repeating_a_booking_with_its_key_returns_the_first_appointment(
    client, world, services
):
    key = {"Idempotency-Key": "alice-wed-0900"}
    first = await book(client, world, NINE, headers=key)
    created = await ok(first, 201)
    assert "Idempotent-Replayed" not in first.headers
    before = await log_position(services)

    repeat = await book(client, world, NINE, headers=key)

    assert await ok(repeat, 201) == created
    assert repeat.headers["Idempotent-Replayed"] == "true"
    assert repeat.headers["Location"] == f"/appointments/{created['id']}"
    assert await log_position(services) == before
    assert [a["id"] for a in await agenda(client, world, WEDNESDAY)] == [created["id"]]


async def test_the_same_key_with_another_body_is_refused(client, world, services):
    key = {"Idempotency-Key": "alice-wed"}
    await booked(client, world, NINE, headers=key)
    before = await log_position(services)

    response = await book(client, world, paris(WEDNESDAY, "10:00"), headers=key)

    body = await problem(response, 422, "Idempotency-Key")
    assert body["type"].endswith("/idempotency-key-reused")
    assert await log_position(services) == before
    assert len(await agenda(client, world, WEDNESDAY)) == 1


async def test_a_key_belongs_to_the_actor_that_used_it(client, world):
    key = {"Idempotency-Key": "same-key"}
    alice = await booked(client, world, NINE, headers=key)

    bob = await book(client, world, paris(WEDNESDAY, "10:00"), who="other_patient", headers=key)

    created = await ok(bob, 201)
    assert created["id"] != alice["id"]
    assert "Idempotent-Replayed" not in bob.headers


async def test_concurrent_repeats_of_one_key_book_once(client, world):
    key = {"Idempotency-Key": "flaky-network-retry"}

    responses = await asyncio.gather(*(book(client, world, NINE, headers=key) for _ in range(20)))

    created = [r for r in responses if r.status == 201]
    bodies = [await ok(r, 201) for r in created]
    assert len({b["id"] for b in bodies}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in created) == 1
    assert [a["id"] for a in await agenda(client, world, WEDNESDAY)] == [bodies[0]["id"]]
    # Whatever the interleaving, no repeat may answer with a different booking.
    for other in (r for r in responses if r.status != 201):
        await problem(other, 409)


class ClaimSavedLate:
    """The real repository, except that a key lookup finding nothing waits, for
    every request but the first, until the first request has saved its claim:
    the interleaving in which a repeat looks for the key just too early."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self.lookups = 0
        self.claimed = asyncio.Event()

    async def get(self, cls: Any, aggregate_id: Any) -> Any:
        return await self.repo.get(cls, aggregate_id)

    async def get_many(self, wanted: Any, *, remembered: bool = False) -> Any:
        return await self.repo.get_many(wanted, remembered=remembered)

    async def save(
        self, aggregates: Any, meta: Any, idempotency: Any = None, *, relied_on: Any = ()
    ) -> int:
        try:
            position: int = await self.repo.save(aggregates, meta, idempotency, relied_on=relied_on)
            return position
        finally:
            if idempotency is not None:
                self.claimed.set()

    async def idempotent_result(self, scope: str, key: str) -> Any:
        found = await self.repo.idempotent_result(scope, key)
        self.lookups += 1
        if found is None and self.lookups > 1:
            await asyncio.wait_for(self.claimed.wait(), 5)
        return found


async def test_a_repeat_that_looked_for_its_key_too_early_still_replays(services, world):
    late = BookingService(ClaimSavedLate(services.booking.repo), services.booking.clock)
    app = create_app(dataclasses.replace(services, booking=late))
    key = {"Idempotency-Key": "double-click"}
    async with TestClient(TestServer(app)) as client:
        first, second = await asyncio.gather(
            book(client, world, NINE, headers=key), book(client, world, NINE, headers=key)
        )
        bodies = [await ok(first, 201), await ok(second, 201)]

    assert bodies[0]["id"] == bodies[1]["id"]
