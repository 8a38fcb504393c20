"""Benchmark 5: Projector.rebuild() events/s against a raw keyset scan of the log, same run.

Ours: `Projector(pool, projection).rebuild()` of the agenda and availability read models,
from zero, over a log of realistic events (tests/bench/history.py): fresh shadow tables,
pages of 5,000 events each applied in one transaction (map every event to its domain
class, run the projection's statements), then the swap.
Baseline: the same log read in the same pages with asyncpg and nothing else:
`SELECT <the columns read_after takes> FROM carnet.events WHERE (tx, position) > ($1, $2)
ORDER BY tx, position LIMIT 5000`.
"""

import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg

from infra.bootstrap import open_pool
from infra.codec import TypedMapper
from infra.eventstore import Checkpoint, EventStore
from infra.projector import Projector
from infra.schema import SCHEMA
from infra.settings import Settings
from projections import READ_SCHEMA, Projection
from projections.agenda import AgendaProjection
from projections.availability import AvailabilityProjection
from tests.bench.common import (
    Config,
    Result,
    Run,
    fresh_database,
    median_rate,
    paired_ratios,
    rounds,
    say,
)
from tests.bench.history import fill_log

PAGE = 5000  # what Projector.rebuild reads at a time
SCAN = f"""
SELECT position, tx, originator_id, originator_version, topic, state, recorded_at, metadata
FROM {SCHEMA}.events
WHERE (tx, position) > ($1::xid8, $2::bigint)
ORDER BY tx, position
LIMIT $3
"""
RAW = "raw keyset scan"


async def raw_scan(pool: asyncpg.Pool) -> int:
    tx, position, seen = 0, 0, 0
    async with pool.acquire() as conn:
        while rows := await conn.fetch(SCAN, tx, position, PAGE):
            seen += len(rows)
            tx, position = int(rows[-1][1]), rows[-1][0]
    return seen


def timed(count: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[Run]]:
    async def measure() -> Run:
        began, cpu = time.perf_counter(), time.process_time()
        n = await count()
        return Run(n, time.perf_counter() - began, cpu=time.process_time() - cpu)

    return measure


def rebuild_side(
    pool: asyncpg.Pool, projection: Projection
) -> tuple[str, Callable[[], Awaitable[Run]]]:
    projector = Projector(pool, projection)
    return f"ours: {projection.name} rebuild", timed(projector.rebuild)


async def read_pages(pool: asyncpg.Pool, projection: Projection | None, mapped: bool) -> int:
    """Diagnostics: the rebuild's reading, optionally mapping and building statements, no SQL."""
    store, mapper = EventStore(pool), TypedMapper()
    # Logical name -> physical name, as the projector passes them (never run here).
    tables = {t: f"{READ_SCHEMA}.bench_{t}" for t in projection.tables} if projection else {}
    after, seen = Checkpoint(), 0
    async with pool.acquire() as conn:
        while events := await store.read_after(after, PAGE, conn):
            for recorded in events if mapped else ():
                event = mapper.to_domain_event(recorded.stored())
                if projection is not None:
                    projection.apply(event, tables)
            seen += len(events)
            after = events[-1].checkpoint
    return seen


async def breakdown(pool: asyncpg.Pool, projection: Projection, cfg: Config) -> None:
    """What separates a rebuild from the raw scan, one step at a time (over the whole log)."""
    say(f"    breakdown ({projection.name}): each line adds one step; rates against the raw scan")
    sides = [
        (RAW, timed(lambda: raw_scan(pool))),
        ("EventStore.read_after pages", timed(lambda: read_pages(pool, None, False))),
        ("+ TypedMapper.to_domain_event", timed(lambda: read_pages(pool, None, True))),
        (
            f"+ {projection.name}.apply (statements built, not run)",
            timed(lambda: read_pages(pool, projection, True)),
        ),
        rebuild_side(pool, projection),
    ]
    runs = await rounds(sides, max(1, cfg.rebuild_rounds - 1), warm=False)
    for label, _ in sides:
        ratio = statistics.median(paired_ratios(runs[label], runs[RAW]))
        cpu = statistics.median(r.cpu_per_op for r in runs[label]) * 1e6
        say(
            f"    = {label:<52} {median_rate(runs[label]):>9,.0f}/s {ratio:5.3f}x, "
            f"client CPU {cpu:5.1f} µs/event"
        )


async def bench_rebuild(server: str, cfg: Config) -> list[Result]:
    say(
        f"\n[5] rebuild events/s: Projector.rebuild vs raw keyset scan "
        f"({cfg.rebuild_bookings:,} bookings, {cfg.rebuild_rounds} rounds)"
    )
    async with fresh_database(server, "rebuild") as url:
        pool = await open_pool(url, Settings(pool_min=4, pool_max=cfg.concurrency))
        try:
            events = await fill_log(pool, cfg.rebuild_bookings, cfg.concurrency)
            await raw_scan(pool)  # warm: the log in shared buffers for every side
            await pool.execute(f"VACUUM ANALYZE {SCHEMA}.events")
            projections: list[Projection] = [AgendaProjection(), AvailabilityProjection()]
            sides = [(RAW, timed(lambda: raw_scan(pool)))]
            sides += [rebuild_side(pool, p) for p in projections]
            runs = await rounds(sides, cfg.rebuild_rounds, warm=False)
            results = []
            for (label, _), projection in zip(sides[1:], projections, strict=True):
                result = Result(
                    f"[5] {projection.name} rebuild events/s",
                    median_rate(runs[label]),
                    median_rate(runs[RAW]),
                    "raw keyset scan events/s",
                    "/s",
                    0.4,
                    f"{events:,} events, pages of {PAGE:,}; client CPU "
                    f"{runs[label][-1].cpu_per_op * 1e6:.0f} µs/event (scan: "
                    f"{runs[RAW][-1].cpu_per_op * 1e6:.1f})",
                    paired_ratios(runs[label], runs[RAW]),
                )
                results.append(result)
            if cfg.diagnose or any(r.verdict == "MISS" for r in results):
                await breakdown(pool, projections[0], cfg)
        finally:
            await pool.close()
    return results
