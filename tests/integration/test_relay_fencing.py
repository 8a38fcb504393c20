"""The stream stays a prefix of the log: no hole after a lost publish, no second
writer after a lost lease, and a NATS-fed projector that never applies past a hole.

These run against the shared NATS server, each on a stream of its own that it
deletes at the end.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import nats
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from infra.eventstore import Checkpoint, EventStore
from infra.http.keys import Services
from infra.nats_worker import NatsProjector
from infra.projector import Projector
from infra.relay import RELAY_LOCK, Relay
from infra.stream import StreamNames, decode_envelope
from infra.waker import Waker
from tests.conftest import Servers
from tests.integration.test_distribution import AGENDA, applied, stream_positions, until
from tests.integration.test_projections import dump
from tests.workload import run_workload
from tests.world import World


@contextlib.asynccontextmanager
async def stream_of_our_own(
    servers: Servers, duplicate_window: float = 120.0
) -> AsyncIterator[tuple[NATS, StreamNames]]:
    names = StreamNames(f"T{uuid.uuid4().hex[:12].upper()}", duplicate_window)
    nc = await nats.connect(servers.nats_url)
    try:
        yield nc, names
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(names.stream)
        await nc.close()


async def log_order(pool: asyncpg.Pool) -> list[tuple[int, int]]:
    rows = await pool.fetch("SELECT tx, position FROM carnet.events ORDER BY tx, position")
    return [(int(r[0]), int(r[1])) for r in rows]


async def lock_holder(pool: asyncpg.Pool) -> int | None:
    """The backend holding the relay lock in this test's own database, if any."""
    return await pool.fetchval(
        """SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND granted
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        RELAY_LOCK,
    )


async def relay_lock_is_held(pool: asyncpg.Pool) -> bool:
    return await lock_holder(pool) is not None


async def publish_all(relay: Relay) -> None:
    """catch_up until the stream holds the head: a transaction open anywhere on the
    server (other databases too) can hold back what is readable for a while."""
    head = await relay.store.head()

    async def published() -> bool:
        await relay.catch_up()
        return await relay.checkpoint() == head

    await until(published)


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_publish_lost_while_the_next_one_is_stored_leaves_no_hole(
    pool, servers, services: Services, world: World, monkeypatch
):
    async with stream_of_our_own(servers) as (nc, names):
        await run_workload(services, world, 30, seed=51)
        in_log = [position for _, position in await log_order(pool)]
        # k sits mid-batch, so k+1 and the rest of its batch go out right after it.
        lost = in_log[24]
        relay = Relay(pool, nc, names, batch_size=10, ack_timeout=1.0)
        send = nc.publish
        dropped: list[str] = []

        async def lossy(subject: str, payload: bytes = b"", **kwargs: Any) -> None:
            if (kwargs.get("headers") or {}).get("Nats-Msg-Id") == str(lost) and not dropped:
                dropped.append(str(lost))  # lost on the wire: no PubAck will ever come
                return
            await send(subject, payload, **kwargs)

        monkeypatch.setattr(nc, "publish", lossy)
        waker = Waker()
        tasks = [
            asyncio.create_task(relay.run(waker.event(), idle=0.05)),
            asyncio.create_task(waker.listen(pool)),
        ]
        try:

            async def relayed() -> bool:
                return await relay.checkpoint() == await EventStore(pool).head()

            await until(relayed)
        finally:
            await stop(*tasks)
        assert dropped == [str(lost)]
        # The relay went back for k: the stream is the log, in order, once each.
        assert await stream_positions(nc, names) == in_log


async def test_a_relay_that_lost_its_lock_never_publishes_between_its_successors_messages(
    pool, servers, services: Services, world: World, monkeypatch
):
    # A duplicate window shorter than the stall, so that JetStream's de-duplication
    # cannot hide a stale relay's messages: only fencing can.
    async with stream_of_our_own(servers, duplicate_window=1.0) as (nc, names):
        own = await nats.connect(servers.nats_url)  # the first relay's, to stall it alone
        first = Relay(pool, own, names, batch_size=7)
        second = Relay(pool, nc, names, batch_size=7)
        stall, stalled, wakes_up = asyncio.Event(), asyncio.Event(), asyncio.Event()
        late: list[str] = []  # what the first relay sends after it wakes up
        send = own.publish

        async def stalling(subject: str, payload: bytes = b"", **kwargs: Any) -> None:
            message_id = (kwargs.get("headers") or {}).get("Nats-Msg-Id")
            if message_id and stall.is_set() and not wakes_up.is_set():
                stalled.set()  # a long GC pause, a frozen VM: the batch is in hand
                await wakes_up.wait()
            if message_id and wakes_up.is_set():
                late.append(message_id)
            await send(subject, payload, **kwargs)

        monkeypatch.setattr(own, "publish", stalling)
        waker = Waker()
        tasks = [
            asyncio.create_task(waker.listen(pool)),
            asyncio.create_task(first.run(waker.event(), idle=0.05)),
        ]

        async def relayed() -> bool:
            return await first.checkpoint() == await EventStore(pool).head()

        try:
            await until(lambda: relay_lock_is_held(pool))
            first_pid = await lock_holder(pool)
            tasks.append(asyncio.create_task(second.run(waker.event(), idle=0.05)))
            await run_workload(services, world, 30, seed=61)
            await until(relayed)

            # The first relay stalls mid-batch, and meanwhile its lock's session dies.
            stall.set()
            await run_workload(services, world, 10, seed=62)
            await asyncio.wait_for(stalled.wait(), 30)
            await pool.execute("SELECT pg_terminate_backend($1)", first_pid)

            async def second_leads() -> bool:
                return (await lock_holder(pool)) not in (None, first_pid)

            await until(second_leads)
            await run_workload(services, world, 10, seed=63)
            await until(relayed)
            await asyncio.sleep(1.5)  # past the duplicate window

            # The first relay wakes up with its stale batch in hand, and more to publish.
            wakes_up.set()
            await asyncio.sleep(1.0)
            await run_workload(services, world, 10, seed=64)
            await until(relayed)
            await asyncio.sleep(0.5)
        finally:
            await stop(*tasks)
            await own.close()
        in_log = [position for _, position in await log_order(pool)]
        assert await stream_positions(nc, names) == in_log
        assert 0 < len(late) <= 7  # the batch it held, then nothing: it stood down


def _holes(projection: str) -> float:
    found = REGISTRY.get_sample_value("carnet_nats_stream_holes_total", {"projection": projection})
    return found or 0.0


async def test_a_nats_fed_projector_does_not_apply_past_a_hole_in_the_stream(
    pool, servers, services: Services, world: World, caplog
):
    async with stream_of_our_own(servers) as (nc, names):
        await run_workload(services, world, 30, seed=71)
        await publish_all(Relay(pool, nc, names))
        in_log = await log_order(pool)
        # One message goes missing from the stream (a limit, a lost write, an operator).
        hole = len(in_log) * 2 // 3
        await nc.jetstream().delete_msg(names.stream, hole + 1)  # a fresh stream: seq = index + 1

        copy = Projector(pool, AGENDA, instance="agenda_nats")
        holes_before = _holes("agenda_nats")
        halt = asyncio.Event()
        feeder = NatsProjector(copy, nc, names, 10)
        feeder.retry = 0.2  # reads again soon after it meets the hole
        worker = asyncio.create_task(feeder.run(halt))
        before_hole = Checkpoint(*in_log[hole - 1])
        try:

            async def reached_the_hole() -> bool:
                return await copy.checkpoint() >= before_hole

            with caplog.at_level(logging.ERROR, logger="carnet.nats_worker"):
                await until(reached_the_hole)
                await asyncio.sleep(1.5)  # time enough to go past it, and to retry
            assert await copy.checkpoint() == before_hole
            assert await applied(pool, "agenda_nats") == hole
            assert not worker.done()  # it waits at the hole, it does not crash
            assert any("hole" in r.getMessage() for r in caplog.records)
            assert _holes("agenda_nats") > holes_before  # operators see it too

            # Repaired: the stream is re-created, the relay fills it again from the
            # log, and the worker goes on from where it held.
            await nc.jetstream().delete_stream(names.stream)
            await publish_all(Relay(pool, nc, names))

            async def caught_up() -> bool:
                return await copy.checkpoint() == Checkpoint(*in_log[-1])

            await until(caught_up)
        finally:
            halt.set()
            await asyncio.wait_for(worker, 10)
        assert await applied(pool, "agenda_nats") == len(in_log)
        reference = Projector(pool, AGENDA)
        await reference.ensure()
        await reference.catch_up()
        assert await dump(pool, copy) == await dump(pool, reference)


async def test_a_nats_fed_worker_rides_out_a_database_fault(
    pool, servers, services: Services, world: World
):
    async with stream_of_our_own(servers) as (nc, names):
        await run_workload(services, world, 10, seed=72)
        await publish_all(Relay(pool, nc, names))
        in_log = await log_order(pool)
        copy = Projector(pool, AGENDA, instance="agenda_nats")
        real = copy.apply_recorded
        faults: list[int] = []

        async def flaky(events: Any) -> int:
            if not faults:  # the first batch meets a dropped connection
                faults.append(len(events))
                raise asyncpg.ConnectionDoesNotExistError("connection was closed")
            return await real(events)

        copy.apply_recorded = flaky  # type: ignore[method-assign]
        halt = asyncio.Event()
        feeder = NatsProjector(copy, nc, names, 10)
        feeder.retry = 0.2
        worker = asyncio.create_task(feeder.run(halt))
        try:

            async def caught_up() -> bool:
                return await copy.checkpoint() == Checkpoint(*in_log[-1])

            await until(caught_up)
            assert faults and not worker.done()
        finally:
            halt.set()
            await asyncio.wait_for(worker, 10)


def test_a_message_from_before_the_chain_still_decodes_with_no_previous_event() -> None:
    class OldEnvelope(msgspec.Struct, kw_only=True):
        position: int
        tx: int
        originator_id: uuid.UUID
        originator_version: int
        topic: str
        state: bytes
        recorded_at: datetime
        metadata: dict[str, Any] = {}

    old = OldEnvelope(
        position=3,
        tx=700,
        originator_id=uuid.uuid4(),
        originator_version=1,
        topic="domain.agenda:AgendaDay.Opened",
        state=b"{}",
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    envelope = decode_envelope(msgspec.msgpack.encode(old))
    assert envelope.position == 3
    assert envelope.previous is None  # unknown, so a consumer cannot call it a hole
