"""Carnet as several HTTP processes on one PostgreSQL: `carnet serve --workers 2`
on one port and a separate `carnet serve` on another serve one API. Nothing a
security decision depends on is per process: the storm still has one winner
per slot, the enumeration budget and the rate budget are the ones a single
process grants, a suspension holds everywhere at the next request, the ledger
verifies after load on every worker, and a worker killed -9 is replaced while
the others serve on."""

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from infra.bootstrap import build_services, close_pool, open_pool
from services.actors import ActorKind
from tests.e2e.support import paris
from tests.integration.db_support import empty_database, free_port
from tests.integration.test_cli import REPO, run_cli
from tests.world import META, ROOT, World, make_world

RATE, BURST, MISSES = 2.0, 40, 12
LIMITS = {
    "CARNET_RATE_PER_SECOND": str(RATE),
    "CARNET_RATE_BURST": str(BURST),
    "CARNET_ENUMERATION_MISSES": str(MISSES),
    "CARNET_ENUMERATION_WINDOW": "300",
}
READY = re.compile(r"carnet worker ready: slot (\d+), pid (\d+)")


def bookable_day(days_ahead: int = 7) -> str:
    """A weekday (the test world's hours) inside the booking horizon."""
    day = datetime.now(UTC).date() + timedelta(days=days_ahead)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day.isoformat()


@dataclass
class Live:
    url: str
    env: dict[str, str]
    ports: list[int]  # the first: two workers; any other: a process of its own
    world: World
    logs: list[Path]
    procs: list[asyncio.subprocess.Process]

    def base(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}"

    def worker_pids(self) -> dict[int, int]:
        """The workers of the first process that said they were ready, by slot (latest)."""
        return {int(m[1]): int(m[2]) for m in READY.finditer(self.logs[0].read_text())}


async def wait_healthy(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Up, and with N workers, all of them listening (the supervisor says so)."""
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.returncode is None, log.read_text()  # noqa: ASYNC240
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as answer:
                    said = log.read_text()  # noqa: ASYNC240 - a small local file
                    if answer.status == 200 and "HTTP workers on port" in said:
                        return
                    if answer.status == 200 and "--workers" not in log.name:
                        return
            assert time.monotonic() < deadline, log.read_text()  # noqa: ASYNC240
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def live(
    servers: Any, tmp_path: Path, stream_name: str, processes: int
) -> AsyncIterator[Live]:
    async with empty_database(servers.database_url, "workers") as url:
        env = {k: v for k, v in os.environ.items() if k != "CARNET_DATA_DIR"}
        env.update(LIMITS, CARNET_DATABASE_URL=url, CARNET_NATS_URL=servers.nats_url)
        env.update(CARNET_STREAM=stream_name, PYTHONPATH=str(REPO), CARNET_POOL_MIN="1")
        assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0
        pool = await open_pool(url, schema="check")
        try:
            world = await make_world(build_services(pool))
        finally:
            await close_pool(pool)
        ports = [free_port() for _ in range(processes)]
        procs, logs = [], []
        try:
            for i, port in enumerate(ports):
                args = ["serve", "--workers", "2"] if i == 0 else ["serve"]
                log = tmp_path / f"serve-{i}{'--workers' if i == 0 else ''}.log"
                logs.append(log)
                with log.open("wb") as out:
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "infra.cli",
                            *args,
                            cwd=tmp_path,
                            env={**env, "CARNET_HTTP_PORT": str(port)},
                            stdout=out,
                            stderr=asyncio.subprocess.STDOUT,
                        )
                    )
            for port, proc, log in zip(ports, procs, logs, strict=True):
                await wait_healthy(port, proc, log)
            yield Live(url, env, ports, world, logs, procs)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc, log in zip(procs, logs, strict=False):
                code = await asyncio.wait_for(proc.wait(), 40)
                assert code == 0, log.read_text()[-3000:]


async def call(
    method: str, url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection: the kernel spreads them over the workers."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, url, json=body, headers=headers) as answer,
    ):
        data = await answer.json(content_type=None) if answer.content_length != 0 else {}
        return answer.status, data if isinstance(data, dict) else {}


def booking(world: World, day: str, hhmm: str) -> dict[str, str]:
    return {
        "practitioner_id": str(world.practitioner),
        "motive_id": "consultation",
        "start": paris(day, hhmm),
        "patient_id": str(world.patient),
    }


async def fresh_token(url: str, world: World) -> str:
    pool = await open_pool(url, schema="check")
    try:
        issued = await build_services(pool).credentials.issue_token(
            ROOT, META, ActorKind.PATIENT, world.patient, label="fresh"
        )
    finally:
        await close_pool(pool)
    return issued.secret


async def created_once(url: str, ids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """SELECT originator_id::text, count(*) FROM carnet.events
               WHERE originator_id = ANY($1::uuid[]) AND originator_version = 1
               GROUP BY originator_id""",
            ids,
        )
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


def verify(env: dict[str, str], tmp_path: Path) -> None:
    done = run_cli("verify", env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact" in done.stdout


@pytest.mark.timeout(300)
async def test_two_workers_and_a_second_process_serve_one_api_with_one_budget(
    servers, tmp_path, stream_name
):
    async with live(servers, tmp_path, stream_name, processes=2) as carnet:
        world = carnet.world
        admin = world.tokens["admin"]
        day = bookable_day()
        # The storm: ten contenders for each of three slots, through every process.
        slots = ["09:00", "09:20", "09:40"]
        attempts = [
            call("POST", f"{carnet.base(i)}/appointments", admin, booking(world, day, slot))
            for slot in slots
            for i in range(10)
        ]
        answers = await asyncio.gather(*attempts)
        statuses = [s for s, _ in answers]
        assert statuses.count(201) == len(slots), statuses
        assert set(statuses) == {201, 409}, statuses
        won = [body["id"] for s, body in answers if s == 201]
        assert set((await created_once(carnet.url, won)).values()) == {1}

        # The rate budget: one fresh token, 120 requests at once over every process.
        token = await fresh_token(carnet.url, world)
        started = time.monotonic()
        rated = await asyncio.gather(
            *(call("GET", f"{carnet.base(i)}/patients/{world.patient}", token) for i in range(120))
        )
        elapsed = time.monotonic() - started
        granted = sum(s == 200 for s, _ in rated)
        assert {s for s, _ in rated} <= {200, 429}
        # Each process alone would grant BURST; shared, all of them together grant
        # the burst plus what the rate refilled while they ran (the database's clock
        # measures a span inside the client's), plus one for rounding.
        assert BURST <= granted <= BURST + RATE * elapsed + 1, (granted, elapsed)

        # The enumeration budget: a walk of foreign ids alternating between the
        # processes is refused at exactly the MISSES-th miss in total, not later.
        walker = world.tokens["other_patient"]
        walk = [
            (await call("GET", f"{carnet.base(i)}/appointments/{uuid.uuid4()}", walker))[0]
            for i in range(MISSES)
        ]
        assert walk == [404] * (MISSES - 1) + [429], walk
        # Suspended by one process, refused by every worker of every process at once.
        after = await asyncio.gather(
            *(
                call("GET", f"{carnet.base(i)}/patients/{world.other_patient}", walker)
                for i in range(12)
            )
        )
        assert {s for s, _ in after} == {401}

        # Hostile input is refused alike by every worker, with nothing looked up.
        for header in ("Bearer " + "x" * 600, "Bearer \u00e9t\u00e9", "Basic abc", "Bearer  "):
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                http.get(
                    f"{carnet.base(0)}/patients/{world.patient}",
                    headers={"Authorization": header.encode("utf-8").decode("latin-1")},
                ) as answer,
            ):
                assert answer.status == 401
                assert answer.content_type == "application/problem+json"
                assert (await answer.json())["field"] == "Authorization"

        # The ledger after concurrent load on every worker: intact.
        verify(carnet.env, tmp_path)


@pytest.mark.timeout(300)
async def test_a_worker_killed_under_load_is_replaced_and_no_booking_is_lost(
    servers, tmp_path, stream_name
):
    async with live(servers, tmp_path, stream_name, processes=1) as carnet:
        world = carnet.world
        staff = world.tokens["admin"]
        before = carnet.worker_pids()
        assert len(before) == 2, carnet.logs[0].read_text()
        day = bookable_day(8)
        times = [f"{h:02d}:{m:02d}" for h in (9, 10, 11, 14, 15, 16, 17) for m in (0, 20, 40)]
        results: list[tuple[int, dict[str, Any]]] = []

        async def load() -> None:
            for hhmm in times:
                with contextlib.suppress(aiohttp.ClientError):
                    results.append(
                        await call(
                            "POST",
                            f"{carnet.base(0)}/appointments",
                            staff,
                            booking(world, day, hhmm),
                        )
                    )
                await asyncio.sleep(0.05)

        loading = asyncio.create_task(load())
        await asyncio.sleep(0.4)
        os.kill(before[0], signal.SIGKILL)
        await loading
        statuses = [s for s, _ in results]
        # The survivor kept answering: bookings after the kill succeeded.
        assert statuses.count(201) >= len(times) // 2, statuses
        deadline = time.monotonic() + 30
        while carnet.worker_pids().get(0) == before[0]:
            assert time.monotonic() < deadline, carnet.logs[0].read_text()
            await asyncio.sleep(0.2)
        assert "HTTP worker 0 exited" in carnet.logs[0].read_text()
        assert carnet.worker_pids()[1] == before[1]
        won = [body["id"] for s, body in results if s == 201]
        assert set((await created_once(carnet.url, won)).values()) == {1}
        assert len(await created_once(carnet.url, won)) == len(won)
        verify(carnet.env, tmp_path)
