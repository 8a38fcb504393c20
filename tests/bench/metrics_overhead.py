"""Benchmark [i9-1]: what the metrics cost. Booking throughput with metrics on against off.

Two app servers (one process each, as in [3]) serve the same database, each booking
its own establishment's agendas so that neither ever conflicts with the other:

- on: the app as shipped: every request counted and timed (`carnet_http_*`), every
  counter of the stack live, and the background sampler of every `carnet run`
  (log head, lags, pool and database probes every 5 s, the event-loop watcher every
  0.5 s, the ledger's verification); this client scrapes its /metrics every 5 s, as
  Prometheus would.
- off: the same app in a process started with CARNET_METRICS_DISABLED=1, which makes
  every metric in infra/metrics.py a no-op (infra.metrics), and no sampler.

Rounds alternate between them, order reversed every round; the ratio is the median of
the per-round ratios on/off. Goal: >= 0.97.

    python -m tests.bench --only metrics

The server side of this file: `python -m tests.bench.metrics_overhead --database-url URL
--metrics on|off` listens on a free 127.0.0.1 port, prints `port N`, and serves until its
standard input closes.
"""

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from infra.bootstrap import build_services, open_pool
from infra.http.app import create_app
from infra.http.throttle import ThrottlePolicy
from infra.keyring import uninstall
from infra.loop import run_main
from infra.settings import Settings
from tests.bench import append
from tests.bench.common import Config, Result, Run, fresh_database, median_rate, paired_ratios, say
from tests.bench.common import rounds as measured_rounds
from tests.bench.http_bookings import ROOT_DIR, HttpSide, Served, _stop, deal_queues, make_plan
from tests.conftest import T0, FakeClock

ON = "POST /appointments, metrics on"
OFF = "POST /appointments, metrics off"
SCRAPE_EVERY = 5.0


@contextlib.asynccontextmanager
async def metrics_server(
    database_url: str, metrics: bool, sealed: bool = True
) -> AsyncIterator[Served]:
    env = {**os.environ, "CARNET_METRICS_DISABLED": "0" if metrics else "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bench.metrics_overhead",
        "--database-url",
        database_url,
        "--metrics",
        "on" if metrics else "off",
        *(() if sealed else ("--plaintext",)),
        cwd=ROOT_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("port "):
            raise RuntimeError(f"metrics bench server did not start: {line!r}")
        yield Served(f"http://127.0.0.1:{int(line.split()[1])}", [proc.pid])
    finally:
        await _stop(proc)


async def scrape_forever(session: aiohttp.ClientSession, failures: list[str]) -> None:
    while True:
        async with session.get("/metrics") as response:
            body = await response.read()
            if response.status != 200 or b"carnet_http_requests_total" not in body:
                failures.append(f"/metrics answered {response.status}")
        await asyncio.sleep(SCRAPE_EVERY)


async def bench_metrics(server_db: str, cfg: Config) -> list[Result]:
    say(
        f"\n[i9-1] Metrics overhead: bookings/s with metrics on vs off ({cfg.concurrency} "
        f"client workers, {cfg.http_rounds * 2} rounds of {cfg.http_seconds:g} s each side)"
    )
    return await paired_bookings(
        server_db,
        cfg,
        "[i9-1]",
        (ON, True, True),
        (OFF, False, True),
        "metrics",
        0.97,
        "(>1: metrics cost CPU)",
    )


async def paired_bookings(
    server_db: str,
    cfg: Config,
    name: str,
    on_side: tuple[str, bool, bool],
    off_side: tuple[str, bool, bool],
    what: str,
    goal: float,
    cpu_note: str,
    n_rounds: int | None = None,
) -> list[Result]:
    """Bookings/s of two servers of the same build, rounds alternating: each side is
    (label, metrics on, personal fields sealed); the ratio is on/off."""
    on_label, off_label = on_side[0], off_side[0]
    n_rounds = n_rounds or cfg.http_rounds * 2
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database(server_db, what))
        pool = await append.open_bench_pool(url, cfg.concurrency)
        stack.push_async_callback(pool.close)
        services = {True: build_services(pool, clock=FakeClock(T0))}
        if not (on_side[2] and off_side[2]):
            # A plaintext side's patients are written in plaintext, as it would write them.
            plain_pool = await open_pool(url, Settings(pool_min=2, pool_max=cfg.concurrency))
            stack.push_async_callback(plain_pool.close)
            uninstall(plain_pool)
            services[False] = build_services(plain_pool, clock=FakeClock(T0))
        sides: dict[str, HttpSide] = {}
        scrapes: list[str] = []
        for (label, metrics, sealed), seed in ((on_side, 8), (off_side, 9)):
            plan = await make_plan(services[sealed])  # its own practitioners: no conflicts
            served = await stack.enter_async_context(metrics_server(url, metrics, sealed))
            connector = aiohttp.TCPConnector(limit=cfg.concurrency + 1)
            session = aiohttp.ClientSession(served.base_url, connector=connector)
            await stack.enter_async_context(session)
            queues = deal_queues(plan, cfg.concurrency, seed)
            sides[label] = HttpSide(session, served, "/appointments", plan.headers, queues, 201)
            if metrics:
                scraper = asyncio.create_task(scrape_forever(session, scrapes))
                stack.callback(scraper.cancel)
        for side in sides.values():
            await side.run(cfg, cfg.warmup, 30, keep=False)

        async def on() -> Run:
            return await sides[on_label].run(cfg, 10**9, cfg.http_seconds)

        async def off() -> Run:
            return await sides[off_label].run(cfg, 10**9, cfg.http_seconds)

        runs = await measured_rounds(
            [(on_label, on), (off_label, off)],
            n_rounds,
            warm=False,
        )
    for label, side in sides.items():
        if side.failures:
            say(f"    !! {len(side.failures)} requests failed ({label}); first: {side.failures[0]}")
        say(side.cpu_line(label))
    if scrapes:
        say(f"    !! {len(scrapes)} scrapes failed; first: {scrapes[0]}")
    ratios = paired_ratios(runs[on_label], runs[off_label])

    def cpu_us(side: HttpSide) -> float:
        return side.server_cpu / max(1, sum(r.ops for r in side.runs)) * 1e6

    return [
        Result(
            f"{name} bookings/s, {on_label.split(', ')[-1]}",
            median_rate(runs[on_label]),
            median_rate(runs[off_label]),
            off_label.split(", ")[-1],
            "/s",
            goal,
            f"{cfg.concurrency} client workers, one server process each, same database",
            ratios,
        ),
        Result(
            f"{name} server CPU/booking, {on_label.split(', ')[-1]}",
            cpu_us(sides[on_label]),
            cpu_us(sides[off_label]),
            off_label.split(", ")[-1],
            "µs",
            None,
            f"over all rounds; less noisy than the rate on a busy machine {cpu_note}",
        ),
    ]


async def serve(database_url: str, metrics: bool, sealed: bool = True) -> None:
    from infra.metrics import DISABLED
    from infra.sampler import sampling

    assert DISABLED is not metrics, "CARNET_METRICS_DISABLED must match --metrics"
    pool = await open_pool(database_url)
    if not sealed:  # encryption off (benchmark [i11-1] only): no keyring, plaintext
        uninstall(pool)
    # As in [3]: one desk token books for every client worker.
    unthrottled = ThrottlePolicy(rate_per_second=1e9, burst=10**9)
    app = create_app(build_services(pool, clock=FakeClock(T0)), unthrottled)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(pool.close)
        stack.push_async_callback(runner.cleanup)
        if metrics:
            await stack.enter_async_context(sampling(pool))
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"port {runner.addresses[0][1]}", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.metrics_overhead")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--metrics", choices=("on", "off"), required=True)
    parser.add_argument("--plaintext", action="store_true", help="personal fields unsealed")
    args = parser.parse_args()
    run_main(serve(args.database_url, args.metrics == "on", not args.plaintext))


if __name__ == "__main__":
    main()
