"""Benchmark 3: HTTP bookings/s end to end, with latency.

The real app (infra.http.app.create_app over build_services, clock fixed at T0) serves on a
localhost TCP port from its own process (tests/bench/server.py), as `carnet run` would.
This process is the client: one aiohttp.ClientSession, `concurrency` workers, each booking
free 20-minute slots on agenda days that no other worker touches, so no booking conflicts.
Each booking is what a desk clerk's POST /appointments costs: token lookup, practitioner,
patient and agenda-day replays, policy checks, one append of 2-3 events.

Baselines, measured in the same rounds (back to back with each bookings measurement): raw
single-row INSERTs as in benchmark 1, and a hello-world aiohttp handler served the same way
and hit through the same kind of client with the same requests.
"""

import asyncio
import contextlib
import os
import random
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import aiohttp
import msgspec
import psutil  # type: ignore[import-untyped]

from domain.values import BookingPolicy, Motive, Sex
from infra.bootstrap import build_services
from infra.http.keys import Services
from services.actors import Actor, ActorKind
from tests.bench import append
from tests.bench.common import (
    Config,
    Result,
    Run,
    drive,
    fresh_database,
    median_rate,
    paired_ratios,
    rounds,
    say,
)
from tests.conftest import T0, FakeClock
from tests.world import HOURS, META, ROOT

ROOT_DIR = Path(__file__).resolve().parents[2]
PRACTITIONERS = 32
PATIENTS = 64
MOTIVE = Motive("consultation", "Consultation", 20)


@dataclass
class Plan:
    token: str
    practitioners: list[UUID]
    patients: list[UUID]
    timezone: str = "Europe/Paris"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


async def make_plan(services: Services) -> Plan:
    """One establishment, its practitioners and patients, and a desk clerk's token."""
    d = services.directory
    place = await d.register_establishment(
        ROOT, META, "Bench clinic", "1 rue du Banc", "Paris", "Europe/Paris"
    )
    practitioners = [
        (
            await d.register_practitioner(
                ROOT,
                META,
                name=f"Dr Bench {i}",
                specialty="general practice",
                establishment_id=place.id,
                policy=BookingPolicy(),
                motives=[MOTIVE],
                hours=HOURS,
            )
        ).id
        for i in range(PRACTITIONERS)
    ]
    # Registered at this desk: the clinic knows them, so its desk may book them.
    desk = Actor(ActorKind.STAFF, uuid4(), establishment_id=place.id)
    patients = [await bench_patient(services, i, desk) for i in range(PATIENTS)]
    staff = await services.credentials.issue_token(
        ROOT, META, ActorKind.STAFF, None, place.id, label="bench desk"
    )
    return Plan(staff.secret, practitioners, patients)


async def bench_patient(services: Services, i: int, by: Actor = ROOT) -> UUID:
    """Register the i-th bench patient (by the platform, or at a desk); its id."""
    saved = await services.directory.register_patient(
        by,
        META,
        first_name=f"Patient{i}",
        last_name="Bench",
        birth_date=date(1980, 1, 1),
        sex=Sex.OTHER,
        email=f"patient{i}@example.org",
        phone="+33 6 00 00 00 00",
    )
    return saved.id


def slot_starts(day: date, tz: ZoneInfo) -> list[datetime]:
    step = timedelta(minutes=MOTIVE.duration_minutes)
    starts = []
    for hours in HOURS:
        if hours.weekday != day.weekday():
            continue
        at = datetime.combine(day, hours.start, tz)
        while at + step <= datetime.combine(day, hours.end, tz):
            starts.append(at)
            at += step
    return starts


def deal_queues(plan: Plan, workers: int, seed: int = 7) -> list[Iterator[bytes]]:
    """Give each worker its own (practitioner, day) agendas, so no two workers ever race."""
    tz = ZoneInfo(plan.timezone)
    first = (T0 + timedelta(days=1)).date()
    # The default policy opens bookings 90 days ahead.
    days = [first + timedelta(days=i) for i in range(88)]
    agendas = [(p, day) for day in days for p in plan.practitioners]
    encoder = msgspec.json.Encoder()
    rng = random.Random(seed)

    def queue(mine: list[tuple[UUID, date]]) -> Iterator[bytes]:
        for practitioner, day in mine:
            for start in slot_starts(day, tz):
                yield encoder.encode(
                    {
                        "practitioner_id": practitioner,
                        "motive_id": MOTIVE.id,
                        "start": start,
                        "patient_id": rng.choice(plan.patients),
                    }
                )

    return [queue(agendas[w::workers]) for w in range(workers)]


@dataclass
class Served:
    base_url: str
    pids: list[int]


async def _start(kind: str, args: list[str], env: dict[str, str] | None) -> tuple[Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bench.server",
        kind,
        *args,
        cwd=ROOT_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("port "):
            raise RuntimeError(f"bench server ({kind}) did not start: {line!r}")
    except BaseException:
        await _stop(proc)
        raise
    return proc, int(line.split()[1])


async def _stop(proc: Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def server(
    kind: str,
    database_url: str = "",
    workers: int = 1,
    profile: str = "",
    extra: Sequence[str] = (),
) -> AsyncIterator[Served]:
    """Start `workers` tests/bench/server.py processes sharing one port; stop them after.

    `extra`: more arguments for tests/bench/server.py (such as `--ledger off`).
    """
    args = (["--database-url", database_url] if database_url else []) + list(extra)
    procs: list[Process] = []
    port = 0
    try:
        for i in range(workers):
            env = {**os.environ, "CARNET_BENCH_PROFILE": f"{profile}.{i}"} if profile else None
            port_args = ["--port", str(port)] if port else []
            proc, port = await _start(kind, args + port_args, env)
            procs.append(proc)
        yield Served(f"http://127.0.0.1:{port}", [p.pid for p in procs])
    finally:
        for proc in procs:
            await _stop(proc)


class HttpSide:
    """Workers POSTing prepared bodies to one server; keeps its CPU and failure accounts."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        served: Served,
        path: str,
        headers: dict[str, str],
        queues: list[Iterator[bytes]],
        expect: int,
    ) -> None:
        self.session = session
        self.path = path
        self.headers = headers
        self.queues = queues
        self.expect = expect
        self.servers = [psutil.Process(pid) for pid in served.pids]
        self.failures: list[str] = []
        self.runs: list[Run] = []
        self.server_cpu = 0.0  # CPU seconds of the server processes while measured
        self.client_cpu = 0.0  # ... and of this process, the client
        self.busy = 0.0  # CPU seconds the whole machine was busy meanwhile, whoever used them

    async def request(self, worker: int) -> None:
        body = next(self.queues[worker])
        async with self.session.post(self.path, data=body, headers=self.headers) as resp:
            text = await resp.read()
            if resp.status != self.expect:
                self.failures.append(f"{resp.status} {text[:300]!r}")

    async def run(self, cfg: Config, count: int, seconds: float, keep: bool = True) -> Run:
        before = (_cpu(*self.servers), _cpu(psutil.Process()), _busy())
        run = await drive(
            self.request, concurrency=cfg.concurrency, count=count, max_seconds=seconds
        )
        if keep:
            self.runs.append(run)
            self.server_cpu += _cpu(*self.servers) - before[0]
            self.client_cpu += _cpu(psutil.Process()) - before[1]
            self.busy += _busy() - before[2]
        return run

    def cpu_line(self, label: str) -> str:
        n = max(1, sum(r.ops for r in self.runs))
        seconds = sum(r.seconds for r in self.runs) or float("nan")
        cores = psutil.cpu_count() or 1
        return (
            f"    CPU ({label}): server {ms(self.server_cpu / n)}/request "
            f"({self.server_cpu / seconds:.0%} of one core), "
            f"client {ms(self.client_cpu / n)}/request "
            f"({self.client_cpu / seconds:.0%} of one core), "
            f"machine {self.busy / seconds / cores:.0%} busy"
        )


def _cpu(*procs: psutil.Process) -> float:
    return float(sum(t.user + t.system for t in (p.cpu_times() for p in procs)))


def _busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


HELLO = "hello-world POST /hello"
BOOK = "POST /appointments (201)"
RAW = "raw INSERT (autocommit)"


async def bench_http(server_db: str, cfg: Config) -> list[Result]:
    say(
        f"\n[3] HTTP bookings/s end to end ({cfg.concurrency} client workers, "
        f"{cfg.http_workers} server process(es), {cfg.http_rounds} rounds of "
        f"{cfg.http_seconds:g} s bookings, {cfg.hello_count} hello-world requests, "
        f"{cfg.append_count} raw INSERTs)"
    )
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database(server_db, "http"))
        pool = await append.open_bench_pool(url, cfg.concurrency)
        stack.push_async_callback(pool.close)
        plan = await make_plan(build_services(pool, clock=FakeClock(T0)))
        hello_server = await stack.enter_async_context(server("hello", workers=cfg.http_workers))
        app_server = await stack.enter_async_context(
            server("carnet", url, cfg.http_workers, cfg.profile_server)
        )
        sides: dict[str, HttpSide] = {}
        for label, served, path, expect, seed in (
            (HELLO, hello_server, "/hello", 200, 7),
            (BOOK, app_server, "/appointments", 201, 8),
        ):
            connector = aiohttp.TCPConnector(limit=cfg.concurrency)
            session = aiohttp.ClientSession(served.base_url, connector=connector)
            await stack.enter_async_context(session)
            queues = deal_queues(plan, cfg.concurrency, seed)
            sides[label] = HttpSide(session, served, path, plan.headers, queues, expect)
        for http_side in sides.values():
            await http_side.run(cfg, cfg.warmup, 30, keep=False)

        async def hello() -> Run:
            return await sides[HELLO].run(cfg, cfg.hello_count, cfg.max_seconds)

        async def book() -> Run:
            return await sides[BOOK].run(cfg, 10**9, cfg.http_seconds)

        raw = append.side(RAW, lambda n: append.raw_insert(pool, n), cfg, cfg.append_count)
        await raw[1]()  # warm-up
        runs = await rounds([raw, (HELLO, hello), (BOOK, book)], cfg.http_rounds, warm=False)

    booked, hellos = sides[BOOK], sides[HELLO]
    failures = booked.failures
    for label, bad in (("hello", hellos.failures), ("booking", failures)):
        if bad:
            say(f"    !! {len(bad)} {label} requests failed; first: {bad[0]}")
    all_bookings = Run(
        sum(r.ops for r in runs[BOOK]) - len(failures),
        sum(r.seconds for r in runs[BOOK]),
        [t for r in runs[BOOK] for t in r.latencies],
    )
    all_hellos = Run(0, 0.0, [t for r in runs[HELLO] for t in r.latencies])
    latency = (
        f"{all_bookings.ops} bookings, p50 {ms(all_bookings.percentile(50))}, "
        f"p99 {ms(all_bookings.percentile(99))} "
        f"(hello-world p50 {ms(all_hellos.percentile(50))}, "
        f"p99 {ms(all_hellos.percentile(99))})"
    )
    if failures:
        latency += f"; {len(failures)} failed requests counted as done"
    say(f"    latency: {latency}")
    say(booked.cpu_line("bookings"))
    say(hellos.cpu_line("hello-world"))
    if cfg.profile_server:
        say(f"    server profile (cProfile, slows it down): {cfg.profile_server}.0")
    workers = f"{cfg.concurrency} client workers, {cfg.http_workers} server process(es)"
    return [
        Result(
            "[3] HTTP bookings/s",
            median_rate(runs[BOOK]),
            median_rate(runs[RAW]),
            "raw INSERT/s",
            "/s",
            0.4,
            f"{workers}; {latency}",
            paired_ratios(runs[BOOK], runs[RAW]),
        ),
        Result(
            "[3] HTTP bookings/s",
            median_rate(runs[BOOK]),
            median_rate(runs[HELLO]),
            "hello-world req/s",
            "/s",
            None,
            ratios=paired_ratios(runs[BOOK], runs[HELLO]),
        ),
    ]
