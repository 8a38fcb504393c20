"""Kill and restart, NATS outages, and the NATS-fed copy of a read model."""

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import nats

from infra import embedded
from infra.http.keys import Services
from infra.nats_worker import NatsProjector
from infra.projector import CHECKPOINTS, Projector
from infra.relay import Relay
from infra.stream import StreamNames, decode_envelope
from infra.waker import Waker
from projections import all_projections
from tests.integration.test_projections import dump
from tests.workload import run_workload
from tests.world import World

AGENDA = next(p for p in all_projections() if p.name == "agenda")


async def applied(pool: asyncpg.Pool, name: str) -> int:
    return int(await pool.fetchval(f"SELECT applied FROM {CHECKPOINTS} WHERE name = $1", name) or 0)


async def event_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM carnet.events"))


def start_worker(db_url: str, nats_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "project", "agenda", "--batch-size", "10"],
        env={**os.environ, "CARNET_DATABASE_URL": db_url, "CARNET_NATS_URL": nats_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_worker_killed_mid_batch_converges_with_nothing_applied_twice(
    pool, db_url, servers, services: Services, world: World
):
    await run_workload(services, world, 700, seed=11)
    total = await event_count(pool)
    await Projector(pool, AGENDA).ensure()
    kills_mid_way = 0
    for _ in range(3):
        worker = start_worker(db_url, servers.nats_url)
        try:
            # Let it get going, then kill -9 while it is applying batches.
            before = await applied(pool, "agenda")
            for _ in range(500):
                if await applied(pool, "agenda") > before:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
        if 0 < await applied(pool, "agenda") < total:
            kills_mid_way += 1
    assert kills_mid_way >= 1, "the workload finished before any kill; make it longer"

    # A fresh worker finishes the job from the last committed checkpoint.
    worker = start_worker(db_url, servers.nats_url)
    try:
        for _ in range(3000):
            if await applied(pool, "agenda") == total:
                break
            await asyncio.sleep(0.01)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
    assert await applied(pool, "agenda") == total  # each event counted exactly once
    reference = Projector(pool, AGENDA, instance="agenda_reference")
    await reference.ensure()
    await reference.catch_up()
    assert await dump(pool, Projector(pool, AGENDA)) == await dump(pool, reference)


async def stream_positions(nc: nats.NATS, names: StreamNames) -> list[int]:
    js = nc.jetstream()
    info = await js.stream_info(names.stream)
    positions = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(names.stream, seq=seq)
        positions.append(decode_envelope(message.data or b"").position)
    return positions


async def until(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_after_a_nats_outage_the_stream_holds_every_event_once_and_in_order(
    pool, services: Services, world: World, tmp_path: Path
):
    # Our own nats-server, so that the test can stop it. The duplicate window
    # is one second, and the outages last longer than that.
    server = embedded.start_nats(tmp_path / "nats")
    names = StreamNames(f"T{uuid.uuid4().hex[:12].upper()}", duplicate_window=1.0)
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    waker = Waker()
    relay = Relay(pool, nc, names, ack_timeout=1.0)
    listening = asyncio.create_task(waker.listen(pool))
    relaying = asyncio.create_task(relay.run(waker.event(), idle=0.05))
    store = services.booking.repo.store  # type: ignore[attr-defined]

    async def relayed_everything() -> bool:
        return await relay.checkpoint() == await store.head()

    try:
        await run_workload(services, world, 60, seed=21)
        await until(relayed_everything)

        # NATS goes away for longer than the relay's ack timeout; writes go on.
        server.stop()
        await run_workload(services, world, 60, seed=22)
        await asyncio.sleep(2.0)
        assert not await relayed_everything()
        server.restart()
        await until(relayed_everything)

        # The relay dies after its last PubAcks but before noting them, and
        # its successor starts after the duplicate window has passed.
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        await pool.execute("UPDATE carnet.relay_checkpoints SET tx = '0', position = 0")
        await run_workload(services, world, 20, seed=23)
        await asyncio.sleep(1.5)
        successor = Relay(pool, nc, names)
        assert await successor.catch_up() > 0
        assert await relayed_everything()

        in_log = [
            r[0]
            for r in await pool.fetch("SELECT position FROM carnet.events ORDER BY tx, position")
        ]
        assert await stream_positions(nc, names) == in_log

        # A projection fed from the stream equals the one fed from the log.
        from_log = Projector(pool, AGENDA)
        await from_log.ensure()
        await from_log.catch_up()
        from_nats = Projector(pool, AGENDA, instance="agenda_nats")
        stop = asyncio.Event()
        worker = asyncio.create_task(NatsProjector(from_nats, nc, names, 50).run(stop))

        async def nats_copy_done() -> bool:
            return await from_nats.checkpoint() == await store.head()

        await until(nats_copy_done)
        stop.set()
        await worker
        assert await dump(pool, from_nats) == await dump(pool, from_log)
        assert await applied(pool, "agenda_nats") == len(in_log)
    finally:
        for task in (relaying, listening):
            task.cancel()
        await asyncio.gather(relaying, listening, return_exceptions=True)
        await nc.close()
        server.stop()


async def test_two_relays_on_one_stream_publish_each_event_once_and_in_order(
    pool, services: Services, world: World, tmp_path: Path
):
    server = embedded.start_nats(tmp_path / "nats")
    names = StreamNames(f"T{uuid.uuid4().hex[:12].upper()}")
    nc = await nats.connect(server.url)
    waker = Waker()
    relays = [Relay(pool, nc, names, batch_size=7) for _ in range(2)]
    tasks = [asyncio.create_task(r.run(waker.event(), idle=0.02)) for r in relays]
    tasks.append(asyncio.create_task(waker.listen(pool)))
    store = services.booking.repo.store  # type: ignore[attr-defined]
    try:
        await run_workload(services, world, 80, seed=31)

        async def relayed() -> bool:
            return await relays[0].checkpoint() == await store.head()

        await until(relayed)
        in_log = [
            r[0]
            for r in await pool.fetch("SELECT position FROM carnet.events ORDER BY tx, position")
        ]
        assert await stream_positions(nc, names) == in_log
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()
        server.stop()


async def test_a_nats_fed_worker_restarted_mid_stream_misses_nothing(
    pool, services: Services, world: World, tmp_path: Path
):
    server = embedded.start_nats(tmp_path / "nats")
    names = StreamNames(f"T{uuid.uuid4().hex[:12].upper()}")
    nc = await nats.connect(server.url)
    try:
        await run_workload(services, world, 120, seed=41)
        await Relay(pool, nc, names).catch_up()
        total = await event_count(pool)
        copy = Projector(pool, AGENDA, instance="agenda_nats")
        # The first worker stops part-way; a second one picks up from its checkpoint.
        for _ in range(2):
            stop = asyncio.Event()
            worker = asyncio.create_task(NatsProjector(copy, nc, names, 10).run(stop))

            async def some() -> bool:
                return await applied(pool, "agenda_nats") > 0

            await until(some)
            stop.set()
            await worker
        assert 0 < await applied(pool, "agenda_nats") <= total
        stop = asyncio.Event()
        worker = asyncio.create_task(NatsProjector(copy, nc, names, 50).run(stop))

        async def all_applied() -> bool:
            return await applied(pool, "agenda_nats") == total

        await until(all_applied)
        stop.set()
        await worker
        reference = Projector(pool, AGENDA)
        await reference.ensure()
        await reference.catch_up()
        assert await dump(pool, copy) == await dump(pool, reference)
    finally:
        await nc.close()
        server.stop()
