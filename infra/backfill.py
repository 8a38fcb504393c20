"""Care relationships for bookings made before relationships existed.

Booking for a patient needs a relationship the policy can check (see
domain/directory.py `CareRelationship`). A log written before that rule
holds bookings but no relationships, so without this step a practice could
no longer book its own long-standing patients. Each (establishment, patient)
pair of a past `Appointment.Booked` gets the relationship it would have had,
with basis `booked`. It is idempotent and safe to run from several
processes at once: the relationship's id is deterministic, so a second
writer meets a version conflict and moves on. `open_pool` runs it once per
database (remembered in `carnet.migrations`).
"""

import logging
from uuid import UUID

import asyncpg

from domain.agenda import Appointment
from domain.directory import Basis, CareRelationship
from infra.repository import PostgresRepository
from infra.schema import SCHEMA
from services.ports import Metadata, VersionConflict

log = logging.getLogger("carnet.backfill")
NAME = "care-relationships-from-bookings"
# Topics of classes the @event decorator makes (invisible to type checkers).
BOOKED = f"{Appointment.__module__}:{Appointment.__qualname__}.Booked"
STARTED = f"{CareRelationship.__module__}:{CareRelationship.__qualname__}.Started"
_META = Metadata(actor_kind="system", actor_id="backfill", request_id=NAME)


async def backfill_relationships(pool: asyncpg.Pool, repo: PostgresRepository) -> int:
    """Start every missing relationship that a past booking implies; return how many."""
    pairs = await pool.fetch(
        f"""SELECT DISTINCT (s ->> 'establishment_id')::uuid, (s ->> 'patient_id')::uuid
        FROM {SCHEMA}.events, LATERAL (SELECT convert_from(state, 'UTF8')::jsonb AS s) j
        WHERE topic = $1""",
        BOOKED,
    )
    existing = {
        r[0]
        for r in await pool.fetch(
            f"SELECT originator_id FROM {SCHEMA}.events WHERE topic = $1",
            STARTED,
        )
    }
    started = 0
    for establishment_id, patient_id in pairs:
        if CareRelationship.create_id(establishment_id, patient_id) in existing:
            continue
        try:
            await repo.save([_started(establishment_id, patient_id)], _META)
        except VersionConflict:
            continue  # another process started it first
        started += 1
    if started:
        log.info("started %d care relationships from past bookings", started)
    return started


def _started(establishment_id: UUID, patient_id: UUID) -> CareRelationship:
    return CareRelationship.start(establishment_id, patient_id, Basis.BOOKED)


async def run_once(pool: asyncpg.Pool, repo: PostgresRepository) -> None:
    """Backfill unless this database has already been backfilled."""
    if await pool.fetchval(f"SELECT 1 FROM {SCHEMA}.migrations WHERE name = $1", NAME):
        return
    await backfill_relationships(pool, repo)
    await pool.execute(
        f"INSERT INTO {SCHEMA}.migrations (name) VALUES ($1) ON CONFLICT DO NOTHING", NAME
    )
