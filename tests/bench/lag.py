"""Benchmark 4: projection lag, from a booking's commit to the read model, under steady load.

Setup: the real app serves bookings from its own process, as in [3]; its EventStore
NOTIFYs after each commit (coalesced). This process runs what `carnet run` runs in the
background, `infra.workers.background(pool, None)`: the four projection runners, woken by
the LISTEN waker, each applying a batch and its checkpoint in one transaction.

1. The runners start, and stay on throughout.
2. The maximum booking rate: 16 closed-loop client workers for a few seconds, while the
   runners project (the machine's two cores serve both, as under `carnet run`).
3. A steady open-loop load at half that rate: one booking every 2/max seconds, whatever the
   answers' latency, for `lag_seconds`.

Lag of a booking = the moment the transaction that advances a read model's checkpoint past
its `Appointment.Booked` event has committed (a probe around Projector.run_once, wall
clock) - that event's `recorded_at` (clock_timestamp() at INSERT, a little before the
commit, so the lag is over- rather than under-stated). Also shown: the lag from the moment
the client had its 201 (what a read-your-writes client waits, at best).

Baseline, in the same run: the bare NOTIFY -> LISTEN round trip on the same server, a
`SELECT pg_notify(...)` on one connection received by a listener on another, every 20 ms
during the same steady load (and, for reference, before it on an idle system).
"""

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import aiohttp
import asyncpg

from infra.bootstrap import build_services, open_pool
from infra.eventstore import EventStore, RecordedEvent
from infra.http.wire import POSITION_HEADER
from infra.projector import Projector
from infra.settings import Settings
from infra.workers import background
from projections import all_projections
from tests.bench.common import Config, Result, Run, fresh_database, percentile, say
from tests.bench.http_bookings import HttpSide, deal_queues, make_plan, ms, server
from tests.conftest import T0, FakeClock

BOOKED = "Appointment.Booked"
HEADLINE = "agenda"  # the read model a desk clerk reads back after booking
PING_EVERY = 0.02


@dataclass
class Probe:
    """When each projection committed which events (patched around Projector.run_once)."""

    batches: list[tuple[str, float, Sequence[RecordedEvent]]] = field(default_factory=list)
    recording: bool = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        applying: dict[int, Sequence[RecordedEvent]] = {}
        apply, run_once = Projector._apply, Projector.run_once

        async def probed_apply(projector: Projector, conn: Any, events: Any, tables: Any) -> None:
            await apply(projector, conn, events, tables)
            applying[id(projector)] = events

        async def probed_run_once(projector: Projector) -> int:
            applying.pop(id(projector), None)
            n = await run_once(projector)  # returns once the batch's transaction committed
            events = applying.pop(id(projector), None)
            if n and events is not None and self.recording:
                self.batches.append((projector.name, time.time(), events))
            return n

        with (
            mock.patch.object(Projector, "_apply", probed_apply),
            mock.patch.object(Projector, "run_once", probed_run_once),
        ):
            yield

    def covered(self) -> dict[str, dict[int, tuple[float, float]]]:
        """projection -> position of each Booked event -> (its recorded_at, when covered)."""
        out: dict[str, dict[int, tuple[float, float]]] = {}
        for name, at, events in self.batches:
            mine = out.setdefault(name, {})
            for e in events:
                if e.topic.endswith(BOOKED):
                    mine[e.position] = (e.recorded_at.timestamp(), at)
        return out


class Pinger:
    """pg_notify on one connection, LISTEN on another: the bare round trip, every `every` s."""

    CHANNEL = "carnet_bench_ping"

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: dict[int, float] = {}
        self.received: dict[int, float] = {}

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self.received[int(str(payload))] = time.perf_counter()

    async def run(self, count: int | None, every: float, stop: asyncio.Event) -> list[float]:
        """Ping until `count` pings or `stop`; return the round trips in seconds."""
        self.sent, self.received = {}, {}
        listener, sender = await asyncpg.connect(self.url), await asyncpg.connect(self.url)
        try:
            await listener.add_listener(self.CHANNEL, self._heard)
            for i in itertools.count():
                if (count is not None and i >= count) or stop.is_set():
                    break
                self.sent[i] = time.perf_counter()
                await sender.execute("SELECT pg_notify($1, $2)", self.CHANNEL, str(i))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
            await asyncio.sleep(0.2)  # the last ones' way back
        finally:
            await listener.close()
            await sender.close()
        return [self.received[i] - t for i, t in self.sent.items() if i in self.received]


@dataclass
class Steady:
    """An open-loop booking load: request i leaves at start + i / rate, answered or not."""

    rate: float
    seconds: float
    answered: dict[int, float] = field(default_factory=dict)  # position -> 201 (wall clock)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    late: int = 0  # requests that left later than scheduled (the in-flight cap was reached)
    elapsed: float = 0.0

    async def run(
        self, session: aiohttp.ClientSession, headers: dict[str, str], queues: list[Iterator[bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        cap = asyncio.Semaphore(256)
        tasks: set[asyncio.Task[None]] = set()

        async def book(i: int) -> None:
            body = next(queues[i % len(queues)])
            began = time.perf_counter()
            try:
                async with session.post("/appointments", data=body, headers=headers) as resp:
                    text = await resp.read()
                    if resp.status == 201:
                        self.answered[int(resp.headers[POSITION_HEADER])] = time.time()
                        self.latencies.append(time.perf_counter() - began)
                    else:
                        self.failures.append(f"{resp.status} {text[:300]!r}")
            finally:
                cap.release()

        start = loop.time()
        for i in range(int(self.rate * self.seconds)):
            delay = start + i / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                self.late += 1
            await cap.acquire()
            task = asyncio.create_task(book(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*list(tasks))
        self.elapsed = loop.time() - start

    @property
    def achieved(self) -> float:
        return len(self.answered) / self.elapsed if self.elapsed else 0.0


async def caught_up(store: EventStore, projectors: list[Projector], within: float) -> float:
    """Wait until every projection's checkpoint covers the log's head; return the seconds."""
    began = time.perf_counter()
    head = await store.head()
    while True:
        if all([await p.checkpoint() >= head for p in projectors]):
            return time.perf_counter() - began
        if time.perf_counter() - began > within:
            raise TimeoutError(f"read models did not reach {head} in {within:g} s")
        await asyncio.sleep(0.01)


def lags(covered: dict[int, tuple[float, float]], since: float) -> list[float]:
    """Commit (recorded_at) -> covered, of the bookings recorded after `since`."""
    return [at - recorded for recorded, at in covered.values() if recorded >= since]


def bursts(covered: dict[int, tuple[float, float]], since: float, over: float = 0.05) -> str:
    """When the bookings over `over` s of lag were committed: spread out, or all at once?"""
    slow = sorted(r - since for r, at in covered.values() if r >= since and at - r > over)
    if not slow:
        return f"no booking over {ms(over)} of lag"
    seconds: dict[int, int] = {}
    for t in slow:
        seconds[int(t)] = seconds.get(int(t), 0) + 1
    where = ", ".join(f"{s}s: {n}" for s, n in sorted(seconds.items()))
    return (
        f"{len(slow)} bookings over {ms(over)} of lag, committed at "
        f"(second of the load: count) {where}"
    )


@contextlib.asynccontextmanager
async def session_for(base_url: str, limit: int) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=limit)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:
        yield session


def spread(values: list[float]) -> str:
    return f"p50 {ms(percentile(values, 50))}, p99 {ms(percentile(values, 99))}"


async def bench_lag(server_db: str, cfg: Config) -> list[Result]:
    say(
        f"\n[4] projection lag under steady load at half the max booking rate "
        f"({cfg.lag_max_seconds:g} s to find the max, {cfg.lag_seconds:g} s of steady load)"
    )
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database(server_db, "lag"))
        pool = await open_pool(url, Settings(pool_min=4, pool_max=cfg.concurrency))
        stack.push_async_callback(pool.close)
        plan = await make_plan(build_services(pool, clock=FakeClock(T0)))
        app = await stack.enter_async_context(server("carnet", url))
        queues = deal_queues(plan, 3 * cfg.concurrency, seed=9)
        session = await stack.enter_async_context(session_for(app.base_url, 256))

        # 1. The background runners, as `carnet run` starts them, on for the whole run.
        probe = Probe()
        store = EventStore(pool)
        projectors = [Projector(pool, p) for p in all_projections()]
        stack.enter_context(probe.installed())
        await stack.enter_async_context(background(pool, None))
        await caught_up(store, projectors, 60)

        # 2. The max rate, closed loop, the runners projecting meanwhile.
        closed = HttpSide(session, app, "/appointments", plan.headers, queues, 201)
        await closed.run(cfg, cfg.warmup, 30, keep=False)
        failed = len(closed.failures)
        full = await closed.run(cfg, 10**9, cfg.lag_max_seconds)
        failed = len(closed.failures) - failed
        if closed.failures:
            say(f"    !! {len(closed.failures)} bookings failed; first: {closed.failures[0]}")
        full = Run(full.ops - failed, full.seconds, full.latencies)  # the max counts 201s only
        seconds = await caught_up(store, projectors, 120)
        rate = cfg.lag_rate or full.rate / 2
        say(
            f"    max: {full.rate:,.0f} bookings/s ({cfg.concurrency} closed-loop workers, "
            f"p50 {ms(full.percentile(50))}; the read models were {seconds:.1f} s behind at "
            f"its end); steady load at {rate:,.0f}/s{' (--lag-rate)' if cfg.lag_rate else ''}"
        )
        pinger = Pinger(url)
        idle = await pinger.run(200, 0.005, asyncio.Event())
        say(f"    NOTIFY -> LISTEN, idle system: {spread(idle)} ({len(idle)} pings)")

        # 3. The steady load, with the pinger alongside.
        steady = Steady(rate, cfg.lag_seconds)
        stop = asyncio.Event()
        probe.recording = True
        since = time.time()
        pinging = asyncio.create_task(pinger.run(None, PING_EVERY, stop))
        await steady.run(session, plan.headers, queues[cfg.concurrency :])
        await caught_up(store, projectors, 60)
        stop.set()
        loaded = await pinging
        probe.recording = False

    covered = probe.covered()
    headline = lags(covered.get(HEADLINE, {}), since)
    everywhere = [
        max(covered[name][p][1] for name in covered) - covered[HEADLINE][p][0]
        for p in covered.get(HEADLINE, {})
        if all(p in mine for mine in covered.values()) and covered[HEADLINE][p][0] >= since
    ]
    client = [
        covered[HEADLINE][p][1] - at for p, at in steady.answered.items() if p in covered[HEADLINE]
    ]
    say(
        f"    steady: {len(steady.answered):,} bookings at {steady.achieved:,.0f}/s "
        f"(target {rate:,.0f}/s, {steady.late} sent late, {len(steady.failures)} failed), "
        f"booking latency {spread(steady.latencies)}"
    )
    if steady.failures:
        say(f"    !! first failure: {steady.failures[0]}")
    for name, mine in sorted(covered.items()):
        say(f"    commit -> {name:<13} {spread(lags(mine, since))} ({len(lags(mine, since))})")
    say(f"    commit -> all four read models: {spread(everywhere)}")
    say(f"    {bursts(covered.get(HEADLINE, {}), since)}")
    say(f"    201 at the client -> {HEADLINE}: {spread(client)} (negative: before the 201)")
    say(f"    NOTIFY -> LISTEN under the same load: {spread(loaded)} ({len(loaded)} pings)")
    against = "set by --lag-rate; " if cfg.lag_rate else "half the "
    notes = (
        f"{len(headline):,} bookings at {steady.achieved:,.0f}/s ({against}"
        f"{full.rate:,.0f}/s max); commit -> {HEADLINE} p50 {ms(percentile(headline, 50))}; "
        f"commit -> all four read models p99 {ms(percentile(everywhere, 99))}; idle NOTIFY "
        f"round trip p99 {ms(percentile(idle, 99))}"
    )
    to_ms = 1000.0
    return [
        Result(
            f"[4] commit -> {HEADLINE} lag p99",
            percentile(headline, 99) * to_ms,
            percentile(loaded, 99) * to_ms,
            "NOTIFY->LISTEN p99",
            "ms",
            None,
            notes,
            ceiling=50.0,
        ),
        Result(
            f"[4] commit -> {HEADLINE} lag p50",
            percentile(headline, 50) * to_ms,
            percentile(loaded, 50) * to_ms,
            "NOTIFY->LISTEN p50",
            "ms",
            None,
        ),
    ]
