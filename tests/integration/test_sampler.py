"""The sampled gauges move with what they measure, on a real database:
projection and relay lag, the log's head, the pool, database_up on a hung
server, the event loop's lag, the ledger's periodic verification, and the
separate /metrics server of `carnet project` and `carnet relay`."""

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from domain.ledger import LEDGER_ID, AccessRecord
from infra.bootstrap import build_services, open_pool
from infra.eventstore import EventStore
from infra.ledger import Ledger, Verified, verify_ledger_after
from infra.metrics_server import serve_metrics
from infra.projector import CHECKPOINTS, Projector
from infra.sampler import Sampler, pool_waiting, watch_loop
from infra.schema import SCHEMA
from projections import all_projections
from tests.frozen_proxy import FrozenProxy
from tests.world import make_world

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_projection_lag_grows_while_a_projection_is_behind_and_falls_once_caught_up(pool):
    sampler = Sampler(pool, verify_every=None)
    services = build_services(pool)
    await make_world(services)  # events no runner has applied: nothing runs here
    head = await EventStore(pool).last_position()
    await asyncio.sleep(0.05)
    await sampler.sample()

    assert value("carnet_log_head_position") == head
    assert abs(time.time() - (value("carnet_log_head_timestamp_seconds") or 0)) < 60
    for projection in all_projections():
        lag = value("carnet_projection_lag_events", projection=projection.name)
        assert lag == head  # every event, counted exactly (below the count's limit)
        assert (value("carnet_projection_lag_seconds", projection=projection.name) or 0) > 0
        assert value("carnet_projection_stopped", projection=projection.name) == 0

    for projection in all_projections():
        await Projector(pool, projection).catch_up()
    await sampler.sample()

    for projection in all_projections():
        assert value("carnet_projection_lag_events", projection=projection.name) == 0
        assert value("carnet_projection_lag_seconds", projection=projection.name) == 0
        assert value("carnet_projection_position", projection=projection.name) == head


async def test_a_projection_stopped_on_an_error_reads_as_stopped_in_any_process(pool):
    sampler = Sampler(pool, verify_every=None)
    await pool.execute(
        f"UPDATE {CHECKPOINTS} SET state = 'stopped', error = 'boom' WHERE name = 'agenda'"
    )
    await sampler.sample()
    assert value("carnet_projection_stopped", projection="agenda") == 1
    assert value("carnet_projection_stopped", projection="directory") == 0

    await Projector(pool, next(p for p in all_projections() if p.name == "agenda")).resume()
    await sampler.sample()
    assert value("carnet_projection_stopped", projection="agenda") == 0


async def test_relay_lag_counts_what_the_relay_has_not_published(pool):
    sampler = Sampler(pool, verify_every=None)
    await make_world(build_services(pool))
    head = await EventStore(pool).head()
    await pool.execute(
        f"INSERT INTO {SCHEMA}.relay_checkpoints (stream, tx, position) VALUES ('LAGGY', '0', 0)"
    )
    await sampler.sample()
    assert value("carnet_relay_lag_events", stream="LAGGY") == head.position
    assert (value("carnet_relay_lag_seconds", stream="LAGGY") or 0) > 0

    await pool.execute(
        f"UPDATE {SCHEMA}.relay_checkpoints SET tx = $1, position = $2 WHERE stream = 'LAGGY'",
        head.tx,
        head.position,
    )
    await sampler.sample()
    assert value("carnet_relay_lag_events", stream="LAGGY") == 0
    assert value("carnet_relay_lag_seconds", stream="LAGGY") == 0


async def test_a_lag_past_the_count_limit_is_estimated_from_positions(pool, monkeypatch):
    import infra.sampler

    monkeypatch.setattr(infra.sampler, "LAG_COUNT_LIMIT", 3)
    await make_world(build_services(pool))
    head = await EventStore(pool).last_position()
    assert head > 3
    await Sampler(pool, verify_every=None).sample()
    assert value("carnet_projection_lag_events", projection="agenda") == head


async def test_pool_gauges_count_connections_in_use_and_waiters(db_url):
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    held: list[asyncpg.pool.PoolConnectionProxy] = []

    async def hold() -> None:
        held.append(await pool.acquire())

    try:
        sampler = Sampler(pool, verify_every=None)
        await hold()
        await hold()
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        assert pool_waiting(pool) == 1
        sampler.sample_pool()
        assert value("carnet_db_pool_size") == 2
        assert value("carnet_db_pool_max") == 2
        assert value("carnet_db_pool_in_use") == 2
        assert value("carnet_db_pool_waiting") == 1

        await pool.release(held.pop())
        await asyncio.wait_for(waiter, 5)
        while held:
            await pool.release(held.pop())
        sampler.sample_pool()
        assert value("carnet_db_pool_in_use") == 0
        assert value("carnet_db_pool_waiting") == 0
    finally:
        while held:
            await pool.release(held.pop())
        await asyncio.wait_for(pool.close(), 10)


async def test_database_up_reads_0_within_the_timeout_while_the_database_hangs(db_url):
    proxy = await FrozenProxy.in_front_of(db_url)
    pool = await asyncpg.create_pool(proxy.url(db_url), min_size=1, max_size=2, timeout=2)
    try:
        sampler = Sampler(pool, timeout=0.5, verify_every=None)
        await sampler.sample()
        assert value("carnet_database_up") == 1

        proxy.freeze()
        started = time.monotonic()
        await sampler.sample()
        assert time.monotonic() - started < 1.5  # bounded, not the statement timeout
        assert value("carnet_database_up") == 0

        proxy.thaw()
        for _ in range(50):  # the abandoned probe cleans up, then a new one answers
            await sampler.sample()
            if value("carnet_database_up") == 1:
                break
            await asyncio.sleep(0.1)
        assert value("carnet_database_up") == 1
    finally:
        proxy.thaw()
        await asyncio.wait_for(pool.close(), 30)
        await proxy.close()


async def test_event_loop_lag_moves_when_the_loop_is_blocked():
    watcher = asyncio.create_task(watch_loop(0.05))
    try:
        await asyncio.sleep(0.2)
        assert (value("carnet_event_loop_lag_seconds") or 0) < 0.1
        time.sleep(0.3)  # blocks the loop, as a CPU-bound handler would  # noqa: ASYNC251
        await asyncio.sleep(0.01)
        assert (value("carnet_event_loop_lag_seconds") or 0) >= 0.2
        await asyncio.sleep(0.2)
        assert (value("carnet_event_loop_lag_seconds") or 0) < 0.1
    finally:
        watcher.cancel()


def record(n: int) -> AccessRecord:
    return AccessRecord(
        actor_kind="practitioner",
        actor_id=f"practitioner-{n}",
        action="read",
        resource_type="appointment",
        record_ids=(f"appointment-{n}",),
        patient_ids=(f"patient-{n}",),
        fields=("start",),
        at=T0 + timedelta(seconds=n),
        as_of=n,
    )


async def write(pool: asyncpg.Pool, first: int, count: int) -> None:
    ledger = Ledger(EventStore(pool))
    for n in range(first, first + count):
        await ledger.record(record(n))
    await ledger.close()


TAMPER = (
    f"UPDATE {SCHEMA}.events SET state = convert_to(replace("
    "convert_from(state, 'UTF8'), 'patient-2', 'patient-9'), 'UTF8') "
    "WHERE originator_id = $1 AND originator_version = 2"
)


async def test_the_ledger_is_verified_incrementally_and_a_tampered_chain_reads_0(pool):
    await write(pool, 1, 3)
    sampler = Sampler(pool, full_every=3)
    assert await sampler.verify()
    assert value("carnet_ledger_verify_ok") == 1
    assert value("carnet_ledger_verified_entries") == 3
    assert time.time() - (value("carnet_ledger_verify_timestamp_seconds") or 0) < 10
    assert sampler.verified.version == 3

    await write(pool, 4, 2)
    assert await sampler.verify()  # incremental: from entry 3
    assert value("carnet_ledger_verified_entries") == 5

    await pool.execute(TAMPER, LEDGER_ID)
    # An incremental pass does not re-read entry 2; the next full pass does.
    assert await sampler.verify()
    assert not await sampler.verify()  # the third: the whole chain
    assert value("carnet_ledger_verify_ok") == 0
    assert value("carnet_ledger_verified_entries") == 1  # intact before the first bad one


async def test_an_incremental_verification_reads_only_from_its_last_entry(pool):
    await write(pool, 1, 4)
    finding, verified = await verify_ledger_after(pool, Verified())
    assert finding is None and verified.version == 4
    await write(pool, 5, 1)

    finding, later = await verify_ledger_after(pool, verified)
    assert finding is None and later.version == 5

    # The verified entry itself is re-read: changing it is seen.
    await pool.execute(
        f"UPDATE {SCHEMA}.events SET state = convert_to(replace("
        "convert_from(state, 'UTF8'), 'patient-5', 'patient-6'), 'UTF8') "
        "WHERE originator_id = $1 AND originator_version = 5",
        LEDGER_ID,
    )
    finding, kept = await verify_ledger_after(pool, later)
    assert finding is not None and finding.version == 5 and finding.kind == "altered"
    assert kept == later

    # Entries deleted at the tail.
    await pool.execute(
        f"DELETE FROM {SCHEMA}.events WHERE originator_id = $1 AND originator_version >= 4",
        LEDGER_ID,
    )
    finding, _ = await verify_ledger_after(pool, later)
    assert finding is not None and finding.kind == "deleted"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_serve_metrics_serves_metrics_and_samples_when_given_a_pool(db_url):
    pool = await open_pool(db_url)
    try:
        async with (
            serve_metrics("127.0.0.1", free_port(), pool, interval=0.05) as base,
            aiohttp.ClientSession() as session,
        ):
            assert base is not None
            await asyncio.sleep(0.3)
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
            async with session.get(
                f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}
            ) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await response.text()).endswith("# EOF\n")
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples["carnet_database_up"] == 1
        assert samples["carnet_db_pool_max"] == pool.get_max_size()
        assert "carnet_log_head_position" in samples
        assert "carnet_build_info" in samples
    finally:
        await pool.close()


async def test_serve_metrics_on_port_0_serves_nothing():
    async with serve_metrics("127.0.0.1", 0) as base:
        assert base is None


async def test_serve_metrics_without_a_pool_still_serves_the_process_metrics():
    async with (
        serve_metrics("127.0.0.1", free_port()) as base,
        aiohttp.ClientSession() as session,
        session.get(f"{base}/metrics") as response,
    ):
        assert response.status == 200
        assert "carnet_build_info" in await response.text()
