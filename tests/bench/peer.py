"""Benchmark 2: the same appends through the eventsourcing library's own PostgreSQL application.

Peer: `Application` with PERSISTENCE_MODULE=eventsourcing.postgres (psycopg, synchronous),
its default JSON transcoder, one `app.save(appointment)` per new appointment, from as many
threads as we run tasks, over a psycopg pool of that size. Its recorder takes
`LOCK TABLE … IN EXCLUSIVE MODE` in every append transaction.
Ours: the same new appointments through TypedMapper + EventStore.append, as in benchmark 1.
"""

import asyncio
import statistics
from uuid import UUID

from eventsourcing.application import Application

from domain.agenda import Appointment
from infra.schema import SCHEMA
from tests.bench.append import (
    OURS,
    new_appointments,
    open_bench_pool,
    ours,
    side,
    without_triggers,
)
from tests.bench.common import (
    Config,
    Result,
    Run,
    drive_threads,
    fresh_database,
    libpq_params,
    median_rate,
    paired_ratios,
    rounds,
    say,
)


class PeerBookings(Application[UUID]):
    """Nothing of its own: the library's Application, persisting to PostgreSQL."""


def peer_env(url: str, pool_size: int) -> dict[str, str]:
    p = libpq_params(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": p["dbname"],
        "POSTGRES_HOST": p["host"],  # a directory for the embedded server's unix socket
        "POSTGRES_PORT": p["port"],
        "POSTGRES_USER": p["user"],
        "POSTGRES_PASSWORD": p["password"],
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
    }


def measure_peer(app: PeerBookings, cfg: Config, count: int) -> Run:
    appointments = iter(new_appointments(count))

    def op(_: int) -> None:
        appointment: Appointment = next(appointments)
        app.save(appointment)

    return drive_threads(op, concurrency=cfg.concurrency, count=count, max_seconds=cfg.max_seconds)


PEER = "eventsourcing.postgres app.save"
TRIGGERS_OFF = f"{OURS}, {SCHEMA}.events triggers off"


async def bench_peer(server: str, cfg: Config) -> Result:
    say(
        f"\n[2] appends/s: EventStore.append vs eventsourcing.postgres Application "
        f"({cfg.concurrency} tasks / threads, {cfg.peer_count} events x {cfg.peer_rounds} rounds)"
    )
    async with fresh_database(server, "peer") as url:
        pool = await open_bench_pool(url, cfg.concurrency)
        app = PeerBookings(env=peer_env(url, cfg.concurrency))
        try:

            async def peer() -> Run:
                return await asyncio.to_thread(measure_peer, app, cfg, cfg.peer_count)

            sides = [(PEER, peer), side(OURS, lambda n: ours(pool, n), cfg, cfg.peer_count)]
            if cfg.diagnose:
                # What the events table's triggers (a NOTIFY, say) cost against the peer.
                off = side(TRIGGERS_OFF, lambda n: ours(pool, n), cfg, cfg.peer_count)
                sides.append(without_triggers(pool, off))
            runs = await rounds(sides, cfg.peer_rounds)
            if TRIGGERS_OFF in runs:
                ratio = statistics.median(paired_ratios(runs[TRIGGERS_OFF], runs[PEER]))
                say(f"    = {TRIGGERS_OFF}: {ratio:.2f}x the peer")
        finally:
            app.close()
            await pool.close()
    return Result(
        "[2] EventStore.append/s",
        median_rate(runs[OURS]),
        median_rate(runs[PEER]),
        "eventsourcing.postgres/s",
        "/s",
        3.0,
        f"the same new Appointments; peer: Application.save from {cfg.concurrency} threads "
        f"over a psycopg pool of {cfg.concurrency}",
        paired_ratios(runs[OURS], runs[PEER]),
    )
