"""Health probes, and what clients see while the database is unreachable."""

import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from infra.bootstrap import build_services, open_pool, with_database
from infra.http.app import create_app
from infra.http.keys import Services
from tests.conftest import RUN_ID, FakeClock
from tests.e2e.support import WEDNESDAY, paris, problem
from tests.world import make_world


async def test_liveness_answers_ok(client):
    response = await client.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok", "checks": {}}


async def test_readiness_reports_the_database_ok(client):
    response = await client.get("/readyz")

    body = await response.json()
    assert response.status == 200
    assert body["checks"]["database"] == "ok"
    # No NATS client in the tests: degraded, yet ready, since writes go on.
    assert body["status"] in {"ok", "degraded"}
    assert "Retry-After" not in response.headers


async def assert_unavailable(response: ClientResponse) -> None:
    body = await problem(response, 503)
    assert body["type"].endswith("/unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert "asyncpg" not in body["detail"] and "127.0.0.1" not in body["detail"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def nowhere(clock: FakeClock) -> AsyncIterator[Services]:
    """Services whose pool points at a port where no database listens."""
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/carnet"
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2, timeout=2)
    try:
        yield build_services(pool, clock=clock)
    finally:
        await pool.close()


def booking_body(world: Any) -> dict[str, str]:
    return {
        "practitioner_id": str(world.practitioner),
        "motive_id": "consultation",
        "start": paris(WEDNESDAY, "09:00"),
    }


async def test_a_booking_answers_503_when_no_database_listens(nowhere, world):
    async with TestClient(TestServer(create_app(nowhere))) as client:
        booking = await client.post(
            "/appointments", json=booking_body(world), headers=world.auth("patient")
        )
        await assert_unavailable(booking)

        ready = await client.get("/readyz")
        assert ready.status == 503
        assert int(ready.headers["Retry-After"]) > 0
        assert (await ready.json())["checks"]["database"].startswith("down")
        # Liveness does not depend on the database: restarting would not help.
        assert (await client.get("/healthz")).status == 200


async def test_a_booking_answers_503_when_only_the_event_store_is_unreachable(
    services, nowhere, world
):
    # Tokens still resolve; the booking's own reads and writes cannot.
    half = dataclasses.replace(services, booking=nowhere.booking, checks=nowhere.checks)
    async with TestClient(TestServer(create_app(half))) as client:
        for response in (
            await client.post(
                "/appointments", json=booking_body(world), headers=world.auth("patient")
            ),
            await client.get(f"/appointments/{uuid.uuid4()}", headers=world.auth("patient")),
        ):
            await assert_unavailable(response)


async def test_a_booking_answers_503_once_the_database_is_gone(servers, template_db, clock):
    # A running app over its own database, which is then dropped under it.
    name = f"carnet_test_{RUN_ID}_gone_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        pool = await open_pool(with_database(servers.database_url, name))
        try:
            services = build_services(pool, clock=clock)
            world = await make_world(services)
            async with TestClient(TestServer(create_app(services))) as client:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                for _ in range(2):  # the pool's dead connection, then a fresh attempt
                    response = await client.post(
                        "/appointments", json=booking_body(world), headers=world.auth("patient")
                    )
                    await assert_unavailable(response)
                assert (await client.get("/readyz")).status == 503
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
