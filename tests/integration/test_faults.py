"""Writes go on without NATS; a dead database answers 503, never a trace."""

import socket
from datetime import timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from infra.bootstrap import build_services, connect_nats
from infra.http.app import create_app
from tests.conftest import T0
from tests.world import World


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dead_nats_does_not_hold_up_startup():
    async with connect_nats(f"nats://127.0.0.1:{free_port()}") as link:
        assert not link.is_connected and not link.connected.is_set()


async def test_bookings_go_on_while_nats_is_down_and_readyz_says_degraded(
    pool, clock, world: World
):
    services = build_services(pool, clock=clock, nats=None)
    async with TestClient(TestServer(create_app(services))) as client:
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["checks"] == {"database": "ok", "nats": "down"}
        start = (T0 + timedelta(days=1, hours=1)).isoformat()  # Wednesday 09:00 Paris
        booked = await client.post(
            "/appointments",
            json={
                "practitioner_id": str(world.practitioner),
                "motive_id": "consultation",
                "start": start,
            },
            headers=world.auth("patient"),
        )
        assert booked.status == 201, await booked.text()


async def test_a_lost_database_answers_503_with_retry_after_then_recovers(
    db_url, servers, clock, world: World
):
    name = db_url.split("?")[0].rsplit("/", 1)[1]
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    admin = await asyncpg.connect(servers.database_url)
    services = build_services(pool, clock=clock)
    path = f"/patients/{world.patient}"  # served from the patient aggregate
    try:
        async with TestClient(TestServer(create_app(services))) as client:
            assert (await client.get(path, headers=world.auth("patient"))).status == 200
            # Cut the database off: no new connections, existing ones killed.
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            answer = await client.get(path, headers=world.auth("patient"))
            body = await answer.text()
            assert answer.status == 503, body
            assert answer.headers["Retry-After"] == "5"
            assert answer.content_type == "application/problem+json"
            assert "Traceback" not in body
            assert (await client.get("/readyz")).status == 503
            # Back again: the pool reconnects and the same request succeeds.
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert (await client.get(path, headers=world.auth("patient"))).status == 200
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await pool.close()


async def test_a_pool_with_a_connection_that_never_comes_back_still_closes(db_url):
    """A cancelled query can wait for ever on its cancel confirmation, holding its
    connection; stopping must not wait with it."""
    import asyncio
    import time

    from infra.bootstrap import close_pool, open_pool

    pool = await open_pool(db_url)
    held = await pool.acquire()  # never released, as by such a query
    started = time.monotonic()
    await close_pool(pool, within=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(asyncpg.InterfaceError, match="closed"):
        await pool.acquire()
    del held
    await asyncio.sleep(0)


async def test_the_sampler_finishes_its_tick_rather_than_being_cancelled_mid_query(pool):
    import asyncio

    from infra.sampler import sampling

    async with sampling(pool, interval=0.01, database_timeout=2.0, verify_every=None) as sampler:
        await asyncio.sleep(0.1)
    assert sampler.stopping.is_set()
    # Nothing of it is left running on the pool: every connection came back.
    assert pool.get_idle_size() == pool.get_size()
