"""Read models are projections of the log: rebuildable, restartable, exact."""

import asyncio
from collections.abc import Mapping
from typing import Any

import asyncpg

from infra.http.keys import Services
from infra.projection_status import statuses
from infra.projector import CHECKPOINTS, ProjectionFailed, Projector
from projections import Op, all_projections
from tests.workload import run_workload
from tests.world import World


async def dump(pool: asyncpg.Pool, projector: Projector) -> dict[str, list[tuple[Any, ...]]]:
    tables = {}
    for logical, table in projector._logical(projector.tables()).items():
        rows = await pool.fetch(f"SELECT * FROM {table}")
        tables[logical] = sorted(tuple(map(str, r.values())) for r in rows)
    return tables


async def test_rebuilding_every_read_model_from_zero_gives_the_incremental_rows(
    pool, services: Services, world: World
):
    projectors = [Projector(pool, p, batch_size=7) for p in all_projections()]
    for p in projectors:
        await p.ensure()
    # Incrementally: catch up in small batches between rounds of commands.
    for seed in range(4):
        await run_workload(services, world, 40, seed)
        for p in projectors:
            await p.catch_up()
    for p in projectors:
        incremental = await dump(pool, p)
        assert any(incremental.values()), f"{p.name} projected nothing"
        await p.rebuild()
        rebuilt = await dump(pool, p)
        for table, rows in rebuilt.items():
            assert rows == incremental[table], (
                f"{p.name}.{table}: only rebuilt {sorted(set(rows) - set(incremental[table]))},"
                f" only incremental {sorted(set(incremental[table]) - set(rows))}"
            )
    assert {s.name: s.lag_events for s in await statuses(pool)} == {p.name: 0 for p in projectors}


async def test_writes_during_a_rebuild_are_not_lost_at_the_swap(
    pool, services: Services, world: World
):
    agenda = Projector(pool, all_projections()[2])
    assert agenda.name == "agenda"
    await agenda.ensure()
    await run_workload(services, world, 60, seed=1)
    writing = asyncio.create_task(run_workload(services, world, 60, seed=2))
    await agenda.rebuild()
    await writing
    await agenda.catch_up()
    live = await dump(pool, agenda)
    reference = Projector(pool, all_projections()[2], instance="agenda_reference")
    await reference.ensure()
    await reference.catch_up()
    assert await dump(pool, reference) == live


class AppliedOnce:
    """A projection that records each event under a primary key: a second
    application of any event violates it, and the worker would stop."""

    name = "applied_once"
    tables: tuple[str, ...] = ("events",)
    reads_ledger = True  # every event of the log, access entries included

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        return [
            f"CREATE TABLE {t['events']} (originator_id uuid, version int, "
            "PRIMARY KEY (originator_id, version))"
        ]

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        return [
            Op(
                f"INSERT INTO {t['events']} VALUES ($1, $2)",
                (event.originator_id, event.originator_version),
            )
        ]


async def test_two_workers_on_one_projection_never_apply_an_event_twice(
    pool, services: Services, world: World
):
    workers = [Projector(pool, AppliedOnce(), batch_size=5) for _ in range(2)]
    await workers[0].ensure()
    stop = asyncio.Event()

    async def work(worker: Projector) -> int:
        applied = 0
        while not stop.is_set():
            applied += await worker.run_once()
            await asyncio.sleep(0)
        return applied + await worker.catch_up()

    running = [asyncio.create_task(work(w)) for w in workers]
    await run_workload(services, world, 120, seed=3)
    stop.set()
    counts = await asyncio.gather(*running)
    total = await pool.fetchval("SELECT count(*) FROM carnet.events")
    assert sum(counts) == total
    assert all(counts), "both workers should have taken batches"
    assert await pool.fetchval("SELECT count(*) FROM carnet_read.applied_once_events") == total
    row = await pool.fetchrow(
        f"SELECT state, applied FROM {CHECKPOINTS} WHERE name = $1", "applied_once"
    )
    assert (row["state"], row["applied"]) == ("running", total)


class Fragile(AppliedOnce):
    name = "fragile"

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        if type(event).__qualname__ == "Appointment.Cancelled":
            raise ValueError("cannot handle cancellations")
        return super().apply(event, t)


async def test_an_event_a_projection_cannot_apply_stops_it_visibly_and_skips_nothing(
    pool, services: Services, world: World
):
    fragile = Projector(pool, Fragile(), batch_size=3)
    await fragile.ensure()
    await run_workload(services, world, 80, seed=4)
    failed = None
    try:
        await fragile.catch_up()
    except ProjectionFailed as e:
        failed = e
    assert failed is not None and "cannot handle cancellations" in str(failed)
    (status,) = [s for s in await statuses(pool) if s.name == "fragile"]
    assert status.state == "stopped" and status.error and "Appointment.Cancelled" in status.error
    assert status.lag_events > 0
    # Stopped means stopped: another run applies nothing, and nothing was skipped.
    assert await fragile.run_once() == 0
    failing = await pool.fetchval(
        "SELECT position FROM carnet.events WHERE topic LIKE '%Appointment.Cancelled' "
        "ORDER BY tx, position LIMIT 1"
    )
    assert failed.position == failing
    assert status.position < failing
