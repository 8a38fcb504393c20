"""A log written before care relationships existed keeps its practices' patients."""

from datetime import datetime

import pytest

from domain.errors import NotFound
from infra.backfill import STARTED, backfill_relationships, run_once
from services.actors import Actor
from tests.conftest import T0
from tests.world import META, ROOT, World, make_world

WEDNESDAY_9 = T0.replace(day=2, hour=8)  # 09:00 in Paris
WEDNESDAY_10 = T0.replace(day=2, hour=9)


async def _book_bob(services, world: World, actor: Actor, start: datetime):
    return await services.booking.book(
        actor,
        META,
        practitioner_id=world.practitioner,
        motive_id="consultation",
        start=start,
        patient_id=world.other_patient,
    )


async def _forget_relationships(pool) -> None:
    """What a log from before the rule looks like: bookings, no relationships."""
    await pool.execute("DELETE FROM carnet.events WHERE topic = $1", STARTED)


async def test_past_bookings_make_their_patients_known_again(services, pool):
    world = await make_world(services)
    staff = world.actors["staff"]
    await _book_bob(services, world, ROOT, WEDNESDAY_9)
    await _forget_relationships(pool)
    with pytest.raises(NotFound) as refused:  # the unknown patient's answer
        await _book_bob(services, world, staff, WEDNESDAY_10)
    assert refused.value.field == "patient_id"

    assert await backfill_relationships(pool, services.booking.repo) == 1
    assert await backfill_relationships(pool, services.booking.repo) == 0  # idempotent

    booked = await _book_bob(services, world, staff, WEDNESDAY_10)
    assert booked.appointment.patient_id == world.other_patient


async def test_the_backfill_runs_once_per_database(services, pool):
    world = await make_world(services)
    await _book_bob(services, world, ROOT, WEDNESDAY_9)
    await _forget_relationships(pool)
    await pool.execute("DELETE FROM carnet.migrations")

    await run_once(pool, services.booking.repo)
    assert await pool.fetchval("SELECT count(*) FROM carnet.events WHERE topic = $1", STARTED) == 1
    await _forget_relationships(pool)
    await run_once(pool, services.booking.repo)  # remembered: nothing more is written

    assert await pool.fetchval("SELECT count(*) FROM carnet.events WHERE topic = $1", STARTED) == 0
    assert await pool.fetchval("SELECT count(*) FROM carnet.migrations") == 1
