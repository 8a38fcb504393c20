"""How far each read model has got, and whether it runs: for `carnet projections
status`, the metrics and the tests."""

from dataclasses import dataclass

import asyncpg

from infra.projector import CHECKPOINTS


@dataclass(frozen=True)
class Status:
    name: str
    state: str
    position: int
    applied: int
    lag_events: int
    lag_seconds: float
    error: str | None


async def statuses(pool: asyncpg.Pool) -> list[Status]:
    rows = await pool.fetch(
        f"""SELECT p.name, p.state, p.position, p.applied, p.error,
            (SELECT count(*) FROM carnet.events e WHERE (e.tx, e.position) > (p.tx, p.position))
                AS lag_events,
            coalesce(extract(epoch FROM (
                SELECT now() - min(e.recorded_at) FROM carnet.events e
                WHERE (e.tx, e.position) > (p.tx, p.position))), 0) AS lag_seconds
        FROM {CHECKPOINTS} p ORDER BY p.name"""
    )
    return [
        Status(
            r["name"],
            r["state"],
            r["position"],
            r["applied"],
            int(r["lag_events"]),
            float(r["lag_seconds"]),
            r["error"],
        )
        for r in rows
    ]
