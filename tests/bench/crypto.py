"""Benchmarks of crypto-shredding (issue 11): what sealing personal fields costs.

[i11-1] Bookings/s with encryption against the same build with it off, same run:
two app servers on one database (as [i9-1]), one with the keyring (personal
fields sealed, every page's keys loaded), one started `--plaintext` (no
keyring). Goal: >= 0.9.

[i11-2] A rebuild of the agenda read model over a log whose personal fields are
sealed (the patients' registrations, the cancellations' reasons) against the
same rebuild over the same log written in plaintext, rounds alternating.
Goal: >= 0.8.

    python -m tests.bench --only crypto
"""

import contextlib
from collections.abc import Awaitable, Callable

from infra.bootstrap import open_pool
from infra.keyring import KEYS, uninstall
from infra.schema import SCHEMA
from infra.settings import Settings
from projections.agenda import AgendaProjection
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
from tests.bench.metrics_overhead import paired_bookings
from tests.bench.rebuild import rebuild_side

SEALED = "POST /appointments, encryption on"
PLAIN = "POST /appointments, encryption off"


async def bench_crypto(server_db: str, cfg: Config) -> list[Result]:
    say(
        f"\n[i11-1] bookings/s with encryption on vs off ({cfg.concurrency} client workers, "
        f"{cfg.http_rounds + 1} rounds of {cfg.http_seconds:g} s each side)"
    )
    results = await paired_bookings(
        server_db,
        cfg,
        "[i11-1]",
        (SEALED, True, True),
        (PLAIN, True, False),
        "crypto",
        0.9,
        "(>1: sealing costs CPU)",
        # Fewer rounds than [i9-1]: at today's rates more would use up the plan's slots.
        n_rounds=cfg.http_rounds + 1,
    )
    say(
        f"\n[i11-2] agenda rebuild over a sealed log vs a plaintext one "
        f"({cfg.rebuild_bookings:,} bookings, {cfg.rebuild_rounds} rounds)"
    )
    async with contextlib.AsyncExitStack() as stack:
        pools = {}
        for label, sealed in (("sealed log", True), ("plaintext log", False)):
            url = await stack.enter_async_context(fresh_database(server_db, f"crypto{sealed:d}"))
            pool = await open_pool(url, Settings(pool_min=4, pool_max=cfg.concurrency))
            stack.push_async_callback(pool.close)
            if not sealed:
                uninstall(pool)
            events = await fill_log(pool, cfg.rebuild_bookings, cfg.concurrency)
            sealed_rows = await pool.fetchval(
                f'SELECT count(*) FROM {SCHEMA}.events WHERE position(\'"$s":"\' in '
                "convert_from(state, 'UTF8')) > 0"
            )
            say(f"    {label}: {events:,} events, {sealed_rows:,} with sealed fields")
            await pool.execute(f"VACUUM ANALYZE {SCHEMA}.events")
            pools[label] = pool

        def cold(label: str) -> Callable[[], Awaitable[Run]]:
            # A fresh process has loaded no key: each rebuild loads them as it reads.
            _, rebuild = rebuild_side(pools[label], AgendaProjection())

            async def run() -> Run:
                KEYS._keys.clear()
                return await rebuild()

            return run

        runs = await rounds(
            [("sealed log", cold("sealed log")), ("plaintext log", cold("plaintext log"))],
            cfg.rebuild_rounds,
            warm=True,
        )
    results.append(
        Result(
            "[i11-2] agenda rebuild events/s, sealed log",
            median_rate(runs["sealed log"]),
            median_rate(runs["plaintext log"]),
            "plaintext log",
            "/s",
            0.8,
            f"{events:,} events each; keys loaded cold every round",
            paired_ratios(runs["sealed log"], runs["plaintext log"]),
        )
    )
    return results
