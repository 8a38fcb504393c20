"""An HTTP server for benchmarks 3, 4 and 7, in its own process as in production.

    python -m tests.bench.server carnet --database-url URL   # the real app, clock fixed at T0
    python -m tests.bench.server carnet --database-url URL --ledger off   # ledger disabled
    python -m tests.bench.server hello                       # one hello-world handler

It listens on 127.0.0.1 (a free port unless --port is given; SO_REUSEPORT, so several
processes can share one port), prints `port N` on stdout, and serves until its standard
input closes. With CARNET_BENCH_PROFILE=FILE it runs under cProfile and writes the stats to
FILE (read them with `python -m pstats FILE`).
"""

import argparse
import asyncio
import cProfile
import os
import sys
from collections.abc import Sequence
from uuid import UUID

import asyncpg
from aiohttp import web
from eventsourcing.persistence import StoredEvent

from infra.bootstrap import build_services, open_pool
from infra.eventstore import EventStore
from infra.http.app import create_app
from infra.http.throttle import ThrottlePolicy
from infra.ledger import Ledger
from infra.loop import run_main
from services.ports import Idempotency, Metadata
from tests.conftest import T0, FakeClock


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello, world")


class Unwritten(EventStore):
    """An event store whose appends write nothing: a ledger on it does all but the INSERT."""

    async def append(
        self,
        events: Sequence[StoredEvent],
        meta: Metadata,
        idempotency: Idempotency | None = None,
        unchanged: Sequence[tuple[UUID, int]] = (),
    ) -> int:
        return 0


def access_ledger(pool: asyncpg.Pool, mode: str, interval: float | None) -> Ledger | None:
    """on: the app's own ledger; off: `Ledger(..., disabled=True)`, benchmark 7's baseline;
    nowrite: the ledger's whole path (records, hash chain, mapping, group wait) but the INSERT.
    `interval`: the group-commit interval instead of the app's default (A/B runs only).
    """
    if mode == "off":
        return Ledger(EventStore(pool), disabled=True)
    if mode == "on" and interval is None:
        return None  # build_services makes the app's own
    ledger = Ledger(Unwritten(pool) if mode == "nowrite" else EventStore(pool))
    if interval is not None:
        ledger.interval = interval
    return ledger


async def serve(
    kind: str,
    database_url: str | None,
    port: int,
    ledger: str = "on",
    interval: float | None = None,
) -> None:
    pool = None
    if kind == "carnet":
        if database_url is None:
            raise SystemExit("carnet needs --database-url")
        pool = await open_pool(database_url)
        # One desk token books for every client worker: its per-token rate limit would
        # measure the policy, not the server. The throttle still runs on every request.
        unthrottled = ThrottlePolicy(rate_per_second=1e9, burst=10**9)
        services = build_services(
            pool, clock=FakeClock(T0), ledger=access_ledger(pool, ledger, interval)
        )
        app = create_app(services, unthrottled)
    else:
        app = web.Application()
        app.router.add_post("/hello", hello)
    # As `carnet run` serves: no access log.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True)
        await site.start()
        print(f"port {runner.addresses[0][1]}", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    finally:
        await runner.cleanup()
        if pool is not None:
            await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.server")
    parser.add_argument("kind", choices=("carnet", "hello"))
    parser.add_argument("--database-url")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--ledger",
        choices=("on", "off", "nowrite"),
        default="on",
        help="off: Ledger(disabled=True); nowrite: all the ledger does but its INSERT",
    )
    parser.add_argument("--ledger-interval", type=float, help="the ledger's group-commit interval")
    args = parser.parse_args()
    run = serve(args.kind, args.database_url, args.port, args.ledger, args.ledger_interval)
    profile_to = os.environ.get("CARNET_BENCH_PROFILE")
    if not profile_to:
        run_main(run)
        return
    with cProfile.Profile() as profile:
        run_main(run)
    profile.dump_stats(profile_to)


if __name__ == "__main__":
    main()
