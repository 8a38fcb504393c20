"""The soak: a steady mixed load for minutes, watching the server's memory and latency.

    python -m tests.bench.soak                      # 10 minutes (`make soak`)
    python -m tests.bench.soak --seconds 60 --rate 40 --workers 2

The real app serves from its own process(es) (tests/bench/server.py, as benchmark 3).
This process offers a fixed load, open loop: `rate` requests a second whatever the
answers take (a slow server does not slow the load down, as with real users), half of
them bookings (POST /appointments, each with its access entry committed with it) and
half audited agenda reads (GET /practitioners/{id}/agenda, each with its entry). Every
`window` seconds it prints one line of the curve: the server's resident memory (RSS,
summed over its processes), p50/p99 latency of the requests that ended in the window,
the rate achieved and any failure. The projections run in this process, as
`carnet run` runs them beside its HTTP server. At the end it compares the last windows with the
first ones after warm-up: memory that keeps growing, or a p99 that drifts up, is what a
soak is for (a leak, a cache without bound, a table or index that slows every write).
It is a benchmark: it prints, it never fails on a figure.
"""

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import aiohttp
import psutil  # type: ignore[import-untyped]

from infra.bootstrap import build_services
from infra.projector import Projector
from infra.workers import background
from projections import all_projections
from tests.bench import append
from tests.bench.common import fresh_database, percentile, say, server_url
from tests.bench.http_bookings import Plan, deal_queues, make_plan, ms, server
from tests.conftest import T0, FakeClock


@dataclass
class Window:
    started: float
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss: int = 0

    def line(self, n: int, length: float) -> str:
        done = len(self.latencies)
        p50 = ms(percentile(self.latencies, 50)) if done else "-"
        p99 = ms(percentile(self.latencies, 99)) if done else "-"
        failed = f", {len(self.failures)} failed ({self.failures[0]})" if self.failures else ""
        return (
            f"    {n * length:6.0f} s  RSS {self.rss / 2**20:7.1f} MiB  "
            f"p50 {p50:>8}  p99 {p99:>8}  {done / length:6.1f} req/s{failed}"
        )


async def soak(seconds: float, rate: float, window: float, workers: int, concurrency: int) -> None:
    with server_url() as server_db:
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(fresh_database(server_db, "soak"))
            pool = await append.open_bench_pool(url, 12)
            stack.push_async_callback(pool.close)
            plan = await make_plan(build_services(pool, clock=FakeClock(T0)))
            # The read models the agenda reads come from, kept up as `carnet run` keeps them.
            for projection in all_projections():
                await Projector(pool, projection).catch_up()
            await stack.enter_async_context(background(pool, None, database_timeout=5.0))
            served = await stack.enter_async_context(server("carnet", url, workers))
            procs = [psutil.Process(pid) for pid in served.pids]
            session = aiohttp.ClientSession(
                served.base_url, connector=aiohttp.TCPConnector(limit=concurrency)
            )
            await stack.enter_async_context(session)
            bookings = deal_queues(plan, 1)[0]
            day = (T0 + timedelta(days=1)).date().isoformat()
            say(
                f"soak: {seconds:g} s at {rate:g} req/s (half bookings, half audited agenda "
                f"reads), {workers} server process(es), a line every {window:g} s"
            )
            windows = await _drive(session, plan, bookings, day, procs, seconds, rate, window)
    _summary(windows, window)


async def _drive(
    session: aiohttp.ClientSession,
    plan: Plan,
    bookings: Iterator[bytes],
    day: str,
    procs: list[psutil.Process],
    seconds: float,
    rate: float,
    length: float,
) -> list[Window]:
    headers, practitioners = plan.headers, plan.practitioners
    loop = asyncio.get_running_loop()
    start = loop.time()
    windows = [Window(start)]
    in_flight: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        began = loop.time()
        try:
            if n % 2:
                path = f"/practitioners/{practitioners[n % len(practitioners)]}/agenda"
                async with session.get(path, params={"date": day}, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            else:
                body = next(bookings)
                async with session.post("/appointments", data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 201
            status = str(resp.status)
        except Exception as e:  # a soak counts failures, it does not stop on them
            ok, status = False, type(e).__name__
        current = windows[-1]
        current.latencies.append(loop.time() - began)
        if not ok:
            current.failures.append(status)

    n = 0
    while (now := loop.time()) < start + seconds:
        if now >= windows[-1].started + length:
            windows[-1].rss = sum(p.memory_info().rss for p in procs)
            say(windows[-1].line(len(windows), length))
            windows.append(Window(windows[-1].started + length))
        due = int((now - start) * rate)
        while n < due:
            task = asyncio.create_task(one(n))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        await asyncio.sleep(min(0.005, 1 / rate))
    await asyncio.gather(*in_flight)
    windows[-1].rss = sum(p.memory_info().rss for p in procs)
    say(windows[-1].line(len(windows), length))
    return windows


def _summary(windows: list[Window], length: float) -> None:
    # The first window warms caches and the pool; compare what follows.
    steady = windows[1:] if len(windows) > 3 else windows
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]

    def p99(ws: list[Window]) -> float:
        return percentile([t for w in ws for t in w.latencies], 99)

    rss_first = sum(w.rss for w in first) / len(first)
    rss_last = sum(w.rss for w in last) / len(last)
    failed = sum(len(w.failures) for w in windows)
    done = sum(len(w.latencies) for w in windows)
    say(
        f"\nsoak summary: {done} requests, {failed} failed; RSS {rss_first / 2**20:.1f} -> "
        f"{rss_last / 2**20:.1f} MiB ({rss_last / rss_first:.2f}x); p99 "
        f"{ms(p99(first))} -> {ms(p99(last))} ({p99(last) / p99(first):.2f}x), first third "
        f"of the steady windows against the last third ({third} x {length:g} s each)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.soak")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s offered")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per line")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--concurrency", type=int, default=64, help="client connections")
    args = parser.parse_args()
    started = time.monotonic()
    asyncio.run(soak(args.seconds, args.rate, args.window, args.workers, args.concurrency))
    say(f"(took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
