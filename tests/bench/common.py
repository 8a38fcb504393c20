"""What every benchmark shares: the server, a fresh database, the load drivers, the table.

A benchmark never asserts a speed. It measures ours and a baseline in the same run, on
the same machine and server, and reports the ratio against a goal.
"""

import asyncio
import contextlib
import itertools
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from infra.bootstrap import with_database

RUN_ID = uuid.uuid4().hex[:8]
DB_PREFIX = "carnet_bench_"


@dataclass(frozen=True)
class Config:
    concurrency: int = 16  # tasks (asyncio) or threads (psycopg) doing requests at once
    append_count: int = 3000  # events per append measurement
    append_rounds: int = 8  # rounds of back-to-back ours/baseline measurements
    peer_count: int = 1500
    peer_rounds: int = 5
    max_seconds: float = 10.0  # a single measurement stops here even if not at its count
    http_seconds: float = 6.0  # bookings are timed, not counted
    http_rounds: int = 5
    hello_count: int = 3000
    warmup: int = 300
    diagnose: bool = False
    http_workers: int = 1  # benchmark 3: server processes sharing the port
    profile_server: str = ""  # benchmark 3: cProfile the app server into this file
    lag_max_seconds: float = 4.0  # benchmark 4: closed-loop bookings to find the max rate
    lag_seconds: float = 20.0  # benchmark 4: the steady load at half that rate
    lag_rate: float = 0.0  # benchmark 4: a fixed steady rate instead (bookings/s), if set
    rebuild_bookings: int = 13000  # benchmark 5: about 2.2 events each
    rebuild_rounds: int = 3
    relay_bookings: int = 9000  # benchmark 6: about 2.2 events each
    relay_rounds: int = 5
    audit_clients: int = 64  # benchmark 7: concurrent readers of the agenda
    audit_seconds: float = 3.0  # benchmark 7: one measurement of one side
    audit_rounds: int = 6
    ledger_callers: tuple[int, ...] = (1, 10, 50, 200)  # benchmark 8: concurrent record() calls
    ledger_seconds: float = 1.5  # benchmark 8: one measurement of one side at one level
    ledger_rounds: int = 2
    ledger_interval: float | None = None  # benchmarks 7, 8: Ledger(interval=…) instead of default
    replay_events: int = 1_000_000  # issue 8 benchmark 3: the log replayed through the decoder
    replay_rounds: int = 3
    rss_events: int = 10_000_000  # issue 8 benchmark 4: peak RSS of one replay this long
    index_entries: int = 10_000_000  # issue 8 benchmark 1: access entries in the index
    index_samples: int = 200  # issue 8 benchmark 1: days queried, each side


QUICK = Config(
    append_count=1000,
    append_rounds=2,
    peer_count=400,
    peer_rounds=2,
    max_seconds=4.0,
    http_seconds=2.0,
    http_rounds=2,
    hello_count=1000,
    warmup=100,
    lag_max_seconds=2.0,
    lag_seconds=5.0,
    rebuild_bookings=2500,
    rebuild_rounds=1,
    relay_bookings=2500,
    relay_rounds=1,
    audit_seconds=1.5,
    audit_rounds=2,
    ledger_seconds=0.75,
    ledger_rounds=1,
    replay_events=200_000,
    replay_rounds=2,
    rss_events=1_000_000,
    index_entries=300_000,
    index_samples=60,
)


# -- servers and databases ----------------------------------------------------


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    """The maintenance URL of the server named by CARNET_DATABASE_URL, or of an embedded one."""
    url = os.environ.get("CARNET_DATABASE_URL")
    if url:
        yield url
        return
    from infra import embedded

    tmp = Path(tempfile.mkdtemp(prefix="carnet-bench-"))
    try:
        with embedded.start_postgres(tmp / "pg") as pg:
            yield pg.dsn
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def nats_url() -> Iterator[str]:
    """CARNET_NATS_URL, or the URL of an embedded nats-server (JetStream on) started for us."""
    url = os.environ.get("CARNET_NATS_URL")
    if url:
        yield url
        return
    from infra import embedded

    tmp = Path(tempfile.mkdtemp(prefix="carnet-bench-nats-"))
    try:
        with embedded.start_nats(tmp / "nats") as server:
            yield server.url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(server: str, label: str) -> AsyncIterator[str]:
    """A new, empty database for one benchmark, dropped afterwards whatever happens."""
    name = f"{DB_PREFIX}{RUN_ID}_{label}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(server, name)
    finally:
        admin = await asyncpg.connect(server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def libpq_params(url: str) -> dict[str, str]:
    """host/port/user/password/dbname of a postgresql:// URL, for drivers that want them apart.

    The embedded server listens only on a unix socket: its URL names the socket directory
    in `?host=`, which psycopg (libpq) accepts as a host.
    """
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return {
        "host": query.get("host") or parts.hostname or "localhost",
        "port": query.get("port") or str(parts.port or 5432),
        "user": unquote(parts.username or "") or query.get("user") or "postgres",
        "password": unquote(parts.password or "") or query.get("password") or "",
        "dbname": parts.path.lstrip("/") or query.get("dbname") or "postgres",
    }


async def server_facts(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["server_version", "fsync", "synchronous_commit", "shared_buffers"],
        )
    finally:
        await conn.close()
    return ", ".join(f"{r[0]}={r[1]}" for r in rows)


# -- load drivers -------------------------------------------------------------


@dataclass
class Run:
    """One measurement: how many operations finished in how long, and each one's latency."""

    ops: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds this (client) process spent meanwhile, all threads

    @property
    def cpu_per_op(self) -> float:
        return self.cpu / self.ops if self.ops else float("nan")

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def drive(
    op: Callable[[int], Awaitable[Any]],
    *,
    concurrency: int,
    count: int,
    max_seconds: float,
) -> Run:
    """Run `op(worker)` from `concurrency` tasks until `count` calls or `max_seconds` pass."""
    tickets = itertools.count()
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds

    async def worker(w: int) -> None:
        while next(tickets) < count:
            began = time.perf_counter()
            if began > deadline:
                return
            await op(w)
            latencies.append(time.perf_counter() - began)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Run(len(latencies), elapsed, latencies, time.process_time() - cpu)


def drive_threads(
    op: Callable[[int], Any],
    *,
    concurrency: int,
    count: int,
    max_seconds: float,
) -> Run:
    """`drive` for synchronous code: `concurrency` threads calling `op(worker)`."""
    tickets = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    deadline = time.perf_counter() + max_seconds

    def worker(w: int) -> None:
        try:
            while True:
                with lock:
                    if next(tickets) >= count:
                        return
                began = time.perf_counter()
                if began > deadline:
                    return
                op(w)
                latencies.append(time.perf_counter() - began)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    started, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Run(len(latencies), elapsed, latencies, time.process_time() - cpu)


def median_rate(runs: list[Run]) -> float:
    return statistics.median(r.rate for r in runs)


Side = tuple[str, Callable[[], Awaitable[Run]]]


async def rounds(sides: list[Side], n: int, warm: bool = True) -> dict[str, list[Run]]:
    """Measure every side once per round, back to back, reversing the order every round.

    Background load on a shared machine drifts over seconds; two sides measured back to
    back see about the same load, so their per-round ratio is steadier than the ratio of
    their overall rates.
    """
    if warm:
        for _, measure in sides:
            await measure()
    runs: dict[str, list[Run]] = {label: [] for label, _ in sides}
    for r in range(n):
        for label, measure in sides if r % 2 == 0 else list(reversed(sides)):
            run = await measure()
            runs[label].append(run)
            say(fmt_run(f"round {r + 1}: {label}", run))
    return runs


def paired_ratios(ours: list[Run], baseline: list[Run]) -> list[float]:
    return [o.rate / b.rate for o, b in zip(ours, baseline, strict=True) if b.rate]


# -- results ------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    name: str
    ours: float
    baseline: float
    baseline_name: str
    unit: str
    goal: float | None  # minimum ours/baseline; None: reported, not judged (unless `ceiling`)
    notes: str = ""
    ratios: list[float] = field(default_factory=list)  # per round, when measured in pairs
    ceiling: float | None = None  # an absolute goal instead: ours at most this (a latency)

    @property
    def ratio(self) -> float:
        """The median per-round ratio when there are rounds, else ours / baseline."""
        if self.ratios:
            return statistics.median(self.ratios)
        return self.ours / self.baseline if self.baseline else float("nan")

    @property
    def spread(self) -> str:
        if len(self.ratios) < 2:
            return ""
        return f"{min(self.ratios):.2f}-{max(self.ratios):.2f}"

    @property
    def ratio_text(self) -> str:
        """Two decimals, or three where two would round a miss up to the goal."""
        goal = self.goal if self.ceiling is None else None
        if goal is not None and self.ratio < goal <= round(self.ratio, 2):
            return f"{self.ratio:.3f}x"
        return f"{self.ratio:.2f}x"

    @property
    def goal_text(self) -> str:
        if self.ceiling is not None:
            return f"<= {self.ceiling:g} {self.unit}"
        return f">= {self.goal:g}x" if self.goal is not None else "-"

    @property
    def verdict(self) -> str:
        if self.ceiling is not None:
            return "pass" if self.ours <= self.ceiling else "MISS"
        if self.goal is None:
            return "info"
        return "pass" if self.ratio >= self.goal else "MISS"


def amount(value: float, unit: str) -> str:
    """Rates as whole numbers; small figures (milliseconds) with one decimal."""
    if value != value:  # NaN
        return f"- {unit}"
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:,.1f} {unit}"


def table(results: list[Result]) -> str:
    header = ("benchmark", "ours", "baseline", "ratio", "rounds", "goal", "result")
    rows = [
        (
            f"{r.name} vs {r.baseline_name}",
            amount(r.ours, r.unit),
            amount(r.baseline, r.unit),
            r.ratio_text,
            r.spread,
            r.goal_text,
            r.verdict,
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        first, *rest = row
        cells = [first.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = [line(header), rule, *(line(row) for row in rows)]
    legend = (
        "ours, baseline: median rates over the rounds (for latencies: percentiles over all "
        "samples); ratio: median of the per-round ratios (both sides measured back to back), "
        "else ours/baseline; rounds: lowest-highest per-round ratio"
    )
    notes = [f"- {r.name} vs {r.baseline_name}: {r.notes}" for r in results if r.notes]
    return "\n".join([*out, "", legend, *notes])


def say(message: str) -> None:
    print(message, flush=True)


def fmt_run(label: str, run: Run) -> str:
    return (
        f"    {label:<58} {run.ops:>6} in {run.seconds:5.2f} s = {run.rate:>6,.0f}/s, "
        f"client CPU {run.cpu_per_op * 1e6:4.0f} µs/op"
    )
