"""The metric names Carnet exports, read from a live app wired as `carnet run` wires it."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from infra.bootstrap import build_services, connect_nats
from infra.http.app import create_app
from infra.stream import StreamNames
from infra.workers import background
from tests.conftest import UNLIMITED, Servers
from tests.ops.support import declared_names

# Exported only once the background work has run: the ledger's first verification,
# the sampler's first tick, the NATS link's state.
LATE = ("carnet_ledger_verify_ok", "carnet_log_head_position", "carnet_nats_connected")


@contextlib.asynccontextmanager
async def own_stream(url: str) -> AsyncIterator[StreamNames]:
    """A stream of the test's own, deleted afterwards (one stream per database)."""
    names = StreamNames(f"T{uuid.uuid4().hex[:12].upper()}")
    try:
        yield names
    finally:
        nc = await nats.connect(url)
        try:
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(names.stream)
        finally:
            await nc.close()


@pytest.fixture
async def exported_metrics(pool: asyncpg.Pool, servers: Servers) -> set[str]:
    """What GET /metrics serves once the background work (runners, relay, sampler) has
    run, with what the registry declares."""
    async with (
        own_stream(servers.nats_url) as names,
        connect_nats(servers.nats_url) as link,
        background(pool, link, names),
        TestClient(TestServer(create_app(build_services(pool, nats=link), UNLIMITED))) as client,
    ):
        for _ in range(200):
            response = await client.get("/metrics")
            assert response.status == 200
            text = await response.text()
            if all(name in text for name in LATE):
                break
            await asyncio.sleep(0.05)
    served = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    return served | declared_names()
