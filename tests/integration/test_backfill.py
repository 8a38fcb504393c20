"""A log written before care relationships existed keeps its practices' patients."""

from infra.backfill import STARTED, backfill_relationships, run_once
from services.actors import ActorKind
from tests.conftest import T0
from tests.world import META, ROOT, make_world


async def _forget_relationships(pool) -> None:
    """What a log from before the rule looks like: bookings, no relationships."""
    await pool.execute("DELETE FROM carnet.events WHERE topic = $1", STARTED)


async def test_past_bookings_make_their_patients_known_again(services, pool):
    world = await make_world(services)
    bob = world.other_patient
    staff = world.actors["staff"]
    start = T0.replace(day=2, hour=8)
    await services.booking.book(
        ROOT,
        META,
        practitioner_id=world.practitioner,
        motive_id="consultation",
        start=start,
        end=None,
        patient_id=bob,
    )
    await _forget_relationships(pool)
    later = start.replace(hour=9)
    refused = None
    try:
        await services.booking.book(
            staff,
            META,
            practitioner_id=world.practitioner,
            motive_id="consultation",
            start=later,
            end=None,
            patient_id=bob,
        )
    except Exception as e:  # the unknown patient's answer
        refused = e
    assert refused is not None and getattr(refused, "field", None) == "patient_id"

    assert await backfill_relationships(pool, services.booking.repo) == 1
    assert await backfill_relationships(pool, services.booking.repo) == 0  # idempotent

    booked = await services.booking.book(
        staff,
        META,
        practitioner_id=world.practitioner,
        motive_id="consultation",
        start=later,
        end=None,
        patient_id=bob,
    )
    assert booked.appointment.patient_id == bob
    assert staff.kind is ActorKind.STAFF


async def test_the_backfill_runs_once_per_database(services, pool):
    world = await make_world(services)
    await services.booking.book(
        ROOT,
        META,
        practitioner_id=world.practitioner,
        motive_id="consultation",
        start=T0.replace(day=2, hour=8),
        end=None,
        patient_id=world.other_patient,
    )
    await _forget_relationships(pool)
    await pool.execute("DELETE FROM carnet.migrations")

    await run_once(pool, services.booking.repo)
    await _forget_relationships(pool)
    await run_once(pool, services.booking.repo)  # remembered: nothing more is written

    count = await pool.fetchval("SELECT count(*) FROM carnet.events WHERE topic = $1", STARTED)
    assert count == 0
    assert await pool.fetchval("SELECT count(*) FROM carnet.migrations") == 1
