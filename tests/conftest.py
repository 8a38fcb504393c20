"""Real servers for every test run.

With CARNET_DATABASE_URL / CARNET_NATS_URL set (CI sets them), the suite
uses those servers; otherwise it starts PostgreSQL and nats-server from their
wheels. Either way it creates its own databases, one template per run and one
copy per test, and drops them all at the end.
"""

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import AppRunner

from infra.bootstrap import build_services, close_pool, open_pool, with_database
from infra.http.app import create_app
from infra.http.headers import ACCESS_LOG_FORMAT, EscapingAccessLogger
from infra.http.keys import Services
from infra.http.throttle import ThrottlePolicy
from infra.http.wire import MIN_POSITION_HEADER
from infra.workers import background
from tests.world import World, make_world

RUN_ID = uuid.uuid4().hex[:8]
# The key-encryption key of every database the suite makes (infra/keyring.py):
# one for all workers, which copy one template; servers started as
# subprocesses inherit it. A test of a missing or wrong key unsets it.
TEST_KEK = "Y2FybmV0IHRlc3Qga2V5LWVuY3J5cHRpb24ga2V5ISE="
os.environ.setdefault("CARNET_KEK", TEST_KEK)


@dataclass
class Servers:
    database_url: str  # the server's maintenance database
    nats_url: str


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    database_url = os.environ.get("CARNET_DATABASE_URL")
    nats_url = os.environ.get("CARNET_NATS_URL")
    started: list[Any] = []
    tmp = Path(tempfile.mkdtemp(prefix="carnet-test-"))
    try:
        if not database_url or not nats_url:
            from infra import embedded

            if not database_url:
                pg = embedded.start_postgres(tmp / "pg")
                started.append(pg)
                database_url = pg.dsn
            if not nats_url:
                server = embedded.start_nats(tmp / "nats")
                started.append(server)
                nats_url = server.url
        yield Servers(database_url, nats_url)
    finally:
        for running in reversed(started):
            running.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


@pytest.fixture
async def stream_name(servers: Servers) -> AsyncIterator[str]:
    """A JetStream stream name of this test's own, deleted afterwards if it was made."""
    import nats

    name = f"T{uuid.uuid4().hex[:12].upper()}"
    yield name
    nc = await nats.connect(servers.nats_url)
    try:
        await nc.jetstream().delete_stream(name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture(scope="session")
def template_db(servers: Servers) -> Iterator[str]:
    """A database holding the schema, copied for each test (fast: file copy)."""
    name = f"carnet_test_{RUN_ID}_tpl"

    async def create() -> None:
        conn = await _admin(servers.database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        pool = await open_pool(with_database(servers.database_url, name))
        await pool.close()

    async def drop_all() -> None:
        conn = await _admin(servers.database_url)
        try:
            names = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                f"carnet_test_{RUN_ID}_%",
            )
            for row in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{row[0]}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(drop_all())


@pytest.fixture
async def db_url(servers: Servers, template_db: str) -> AsyncIterator[str]:
    name = f"carnet_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    conn = await _admin(servers.database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    yield with_database(servers.database_url, name)
    conn = await _admin(servers.database_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(db_url)
    try:
        yield pool
    finally:
        await close_pool(pool)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def advance(self, **kwargs: float) -> None:
        self._now += timedelta(**kwargs)


# Tuesday 1 December 2026, 08:00 in Paris: inside opening hours, before noon.
T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def services(pool: asyncpg.Pool, clock: FakeClock) -> Services:
    return build_services(pool, clock=clock)


# The suites below make thousands of look-ups from a handful of tokens; the
# throttle has tests of its own (tests/e2e/test_enumeration.py).
UNLIMITED = ThrottlePolicy(rate_per_second=1e9, burst=10**9, enumeration_misses=10**9)


class LoggingAsCarnet(TestServer):
    """A test server whose access log is `carnet serve`'s: no client address, no
    user agent (tests/e2e/test_erasure.py searches the logs for personal data)."""

    async def _make_runner(self, **kwargs: Any) -> AppRunner:
        return AppRunner(
            self.app,
            access_log_class=EscapingAccessLogger,
            access_log_format=ACCESS_LOG_FORMAT,
            **kwargs,
        )


class ConsistentClient(TestClient):
    """A client that reads its own writes, as a well-behaved frontend does:
    every request carries Carnet-Min-Position = the log's head when it is sent,
    so read models answer only once they hold everything written before."""

    def __init__(self, server: TestServer, services: Services) -> None:
        super().__init__(server)
        self.services = services

    async def _request(self, method: str, path: Any, **kwargs: Any) -> Any:
        head = await self.services.read.store.last_position()
        if head:
            kwargs["headers"] = {MIN_POSITION_HEADER: str(head), **(kwargs.get("headers") or {})}
        return await super()._request(method, path, **kwargs)


@pytest.fixture
async def client(services: Services, pool: asyncpg.Pool) -> AsyncIterator[TestClient]:
    # Projections run in-process, as under `make run`.
    async with (
        background(pool, None),
        ConsistentClient(
            LoggingAsCarnet(create_app(services, UNLIMITED)),
            services,
        ) as client,
    ):
        yield client


@pytest.fixture
async def world(services: Services) -> World:
    return await make_world(services)
