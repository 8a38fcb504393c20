"""A hung PostgreSQL (SIGSTOP, a stalled disk, a partition) gives prompt 503s
with Retry-After, and everything recovers by itself once it answers again.

The database is frozen through tests/frozen_proxy.py: connections are
accepted and kept open, but no byte moves. Every wait below is bounded, so a
regression fails in seconds instead of hanging for the minute it once took.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from infra.bootstrap import build_services, open_pool
from infra.eventstore import EventStore
from infra.http.app import create_app
from infra.http.keys import Services
from infra.projector import Projector
from infra.settings import Settings, load_settings
from infra.waker import Waker
from infra.workers import background
from projections import all_projections
from tests.conftest import UNLIMITED, FakeClock
from tests.e2e.support import WEDNESDAY, book, booked, paris
from tests.frozen_proxy import FrozenProxy
from tests.world import World, make_world

T = TypeVar("T")

# The documented bounds: /readyz within the database timeout, every other
# route within the request timeout. SLACK absorbs a loaded test machine.
SETTINGS = Settings(request_timeout=3.0, database_timeout=2.0, pool_min=2, pool_max=4)
SLACK = 1.5


@dataclass
class Carnet:
    """One Carnet process whose database is behind the proxy."""

    proxy: FrozenProxy
    pool: asyncpg.Pool
    services: Services
    client: TestClient
    world: World


async def within(seconds: float, awaitable: Awaitable[T]) -> tuple[T, float]:
    """The result and how long it took; fails after `seconds` rather than hang."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        result = await awaitable
    return result, time.monotonic() - started


async def caught_up(services: Services, *names: str) -> None:
    """Until the read models (all by default) hold the whole log.

    Generous: a transaction open anywhere on the shared server holds back
    what a runner may read, and promptness is not what is tested here.
    """
    names = names or tuple(p.name for p in all_projections())
    position = await services.read.store.last_position()
    await within(35, services.read.wait_for(position, names, within=30))


@pytest.fixture
async def carnet(db_url: str, clock: FakeClock) -> AsyncIterator[Carnet]:
    proxy = await FrozenProxy.in_front_of(db_url)
    pool = await open_pool(proxy.url(db_url), SETTINGS)
    try:
        services = build_services(pool, clock=clock, settings=SETTINGS)
        world = await make_world(services)
        app = create_app(services, UNLIMITED, request_timeout=SETTINGS.request_timeout)
        # The read models' runners share the pool, as under `carnet run`.
        async with background(pool, None), TestClient(TestServer(app)) as client:
            await caught_up(services)  # the world's practitioners are in the directory
            try:
                yield Carnet(proxy, pool, services, client, world)
            finally:
                proxy.thaw()  # the app's cleanup flushes the ledger
    finally:
        proxy.thaw()
        await asyncio.wait_for(pool.close(), 30)
        await proxy.close()


def requests(carnet: Carnet, appointment: str, slot: int) -> dict[str, Awaitable[ClientResponse]]:
    """An unaudited read, two audited reads and a write (a fresh slot each time)."""
    c, w = carnet.client, carnet.world
    return {
        "unaudited read": c.get("/establishments", headers=w.auth("patient")),
        "audited read": c.get(f"/appointments/{appointment}", headers=w.auth("patient")),
        "agenda": c.get(
            f"/practitioners/{w.practitioner}/agenda",
            params={"date": WEDNESDAY},
            headers=w.auth("practitioner"),
        ),
        "write": book(c, w, paris(WEDNESDAY, f"{9 + slot // 3:02d}:{(slot % 3) * 20:02d}")),
    }


async def answers(calls: dict[str, Awaitable[ClientResponse]], bound: float) -> dict[str, Any]:
    """Each call's status, headers, body and time, all sent at once."""

    async def one(call: Awaitable[ClientResponse]) -> tuple[ClientResponse, str, float]:
        response, elapsed = await within(bound, call)
        return response, await response.text(), elapsed

    done = await asyncio.gather(*(one(call) for call in calls.values()))
    return dict(zip(calls, done, strict=True))


def test_a_database_timeout_not_below_the_request_timeout_is_refused_at_startup():
    with pytest.raises(SystemExit, match="CARNET_DATABASE_TIMEOUT must be less"):
        load_settings({"CARNET_REQUEST_TIMEOUT": "2", "CARNET_DATABASE_TIMEOUT": "2"})
    settings = load_settings({"CARNET_REQUEST_TIMEOUT": "4.5", "CARNET_DATABASE_TIMEOUT": "1"})
    assert (settings.request_timeout, settings.database_timeout) == (4.5, 1.0)


async def test_readyz_answers_503_within_the_database_timeout_while_the_database_is_frozen(
    carnet: Carnet,
):
    assert (await carnet.client.get("/readyz")).status == 200
    carnet.proxy.freeze()
    bound = SETTINGS.database_timeout + SLACK
    for _ in range(2):  # the first probe, and one behind a probe still hanging
        ready, elapsed = await within(bound + 10, carnet.client.get("/readyz"))
        assert elapsed < bound, f"/readyz took {elapsed:.1f} s"
        assert ready.status == 503
        assert ready.headers["Retry-After"] == "5"
        assert (await ready.json())["checks"]["database"].startswith("down")


async def test_reads_and_writes_answer_503_with_retry_after_while_the_database_is_frozen(
    carnet: Carnet,
):
    appointment = (await booked(carnet.client, carnet.world, paris(WEDNESDAY, "09:00")))["id"]
    carnet.proxy.freeze()
    bound = SETTINGS.request_timeout + SLACK
    for name, (response, body, elapsed) in (
        await answers(requests(carnet, appointment, 1), bound + 10)
    ).items():
        assert elapsed < bound, f"{name} took {elapsed:.1f} s"
        assert response.status == 503, (name, body)
        assert response.content_type == "application/problem+json", name
        assert response.headers["Retry-After"] == "5", name
        assert "Traceback" not in body


async def test_after_a_thaw_the_same_requests_succeed_without_help(carnet: Carnet):
    appointment = (await booked(carnet.client, carnet.world, paris(WEDNESDAY, "09:00")))["id"]
    carnet.proxy.freeze()
    frozen = await answers(requests(carnet, appointment, 1), SETTINGS.request_timeout + 20)
    assert {r.status for r, _, _ in frozen.values()} == {503}
    carnet.proxy.thaw()
    # More requests than the pool has connections, in rounds: a connection
    # left broken by the freeze would fail one of them.
    for round_ in range(3):
        slots = range(2 + round_ * 2, 4 + round_ * 2)  # 09:40 to 11:20
        calls = {
            f"{name} {slot}": call
            for slot in slots
            for name, call in requests(carnet, appointment, slot).items()
        }
        for name, (response, body, _) in (await answers(calls, 20)).items():
            # A write after the thaw may find that the write sent while frozen
            # took its slot: the refusal is the domain's, not the database's.
            expected = {201, 409} if name.startswith("write") else {200}
            assert response.status in expected, (name, body)


async def test_projections_and_the_waker_catch_up_after_a_freeze(db_url: str, clock: FakeClock):
    proxy = await FrozenProxy.in_front_of(db_url)
    proxied = await open_pool(proxy.url(db_url), SETTINGS)
    direct = await open_pool(db_url, SETTINGS)  # the writers, on the other side of the freeze
    waker = Waker()
    woken = waker.event()
    agenda = next(p for p in all_projections() if p.name == "agenda")
    projector = Projector(proxied, agenda)
    watcher = Projector(direct, agenda)  # reads the checkpoint while the runner is frozen
    tasks = [
        asyncio.create_task(waker.listen(proxied)),
        asyncio.create_task(projector.run(waker.event())),
    ]
    try:
        services = build_services(direct, clock=clock, settings=SETTINGS)
        world = await make_world(services)
        await caught_up(services, "agenda")
        proxy.freeze()
        await asyncio.sleep(SETTINGS.request_timeout)  # the runner's query hangs meanwhile
        async with TestClient(TestServer(create_app(services, UNLIMITED))) as client:
            await booked(client, world, paris(WEDNESDAY, "10:00"))
            head = await EventStore(direct).head()
            await asyncio.sleep(1)
            assert await watcher.checkpoint() < head  # frozen: nothing moved
            proxy.thaw()
            await caught_up(services, "agenda")
            # The LISTEN connection still delivers: a new commit wakes its listener.
            woken.clear()
            await booked(client, world, paris(WEDNESDAY, "10:20"))
            await within(3, woken.wait())
            await caught_up(services, "agenda")
        assert not any(task.done() for task in tasks), [t for t in tasks if t.done()]
    finally:
        proxy.thaw()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(proxied.close(), 30)
        await direct.close()
        await proxy.close()
