"""A three-node JetStream cluster loses a node while bookings are being written:
the stream, with three replicas, still holds each event exactly once, in log order.

The cluster is the test's own (nats-server from its wheel, on loopback ports),
not the shared server, so that the test can kill one of its nodes.
"""

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamInfo

from infra import embedded
from infra.eventstore import EventStore
from infra.http.keys import Services
from infra.natslink import NatsLink
from infra.relay import Relay
from infra.stream import StreamNames, decode_envelope, ensure_stream
from infra.waker import Waker
from tests.integration.test_distribution import until
from tests.integration.test_relay_fencing import log_order, stop
from tests.workload import run_workload
from tests.world import World


@pytest.fixture
def cluster() -> Iterator[embedded.NatsCluster]:
    """Three JetStream nodes, each with its store in a directory removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="carnet-nats-cluster-"))
    started: embedded.NatsCluster | None = None
    try:
        started = embedded.start_nats_cluster(root, size=3)
        yield started
    finally:
        if started is not None:
            started.stop()
        shutil.rmtree(root, ignore_errors=True)


async def replicated_stream(nc: NATS, names: StreamNames) -> StreamInfo:
    """Create the stream, and wait until it has a leader and every replica is current.

    Right after the cluster elects its meta leader, the other nodes may not yet
    count as peers: a three-replica stream is refused until they do.
    """
    js = nc.jetstream()
    ready: list[StreamInfo] = []

    async def current() -> bool:
        try:
            await ensure_stream(js, names)
            info = await js.stream_info(names.stream)
        except Exception:
            return False
        replicas = (info.cluster.replicas or []) if info.cluster else []
        if info.cluster is None or not info.cluster.leader or len(replicas) != 2:
            return False
        ready[:] = [info]
        return all(peer.current for peer in replicas)

    await until(current, within=20)
    return ready[0]


async def stream_contents(nc: NATS, names: StreamNames) -> list[tuple[str | None, int]]:
    """Each stored message's Nats-Msg-Id and the log position its envelope holds."""
    js = nc.jetstream()
    info = await js.stream_info(names.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(names.stream, seq=seq)
        msg_id = (message.headers or {}).get("Nats-Msg-Id")
        out.append((msg_id, decode_envelope(message.data or b"").position))
    return out


async def test_a_cluster_that_loses_a_node_under_load_keeps_each_event_once_and_in_order(
    pool, services: Services, world: World, cluster: embedded.NatsCluster
):
    names = StreamNames(f"T{uuid.uuid4().hex[:12].upper()}", replicas=3)
    admin = await nats.connect(
        servers=[node.url for node in cluster.nodes], max_reconnect_attempts=-1
    )
    link = NatsLink(cluster.url)  # the comma-separated list, as CARNET_NATS_URL holds it
    waker = Waker()
    tasks: list[asyncio.Task[object]] = []
    try:
        info = await replicated_stream(admin, names)
        assert info.config.num_replicas == 3
        assert await link.connect_once()
        assert link.nc is not None
        relay = Relay(pool, link.nc, names, ack_timeout=2.0)
        tasks += [
            asyncio.create_task(waker.listen(pool)),
            asyncio.create_task(relay.run(waker.event(), idle=0.05)),
        ]
        load = asyncio.create_task(run_workload(services, world, 600, seed=81))
        tasks.append(load)

        # Mid-load, the node leading the stream dies: no goodbye, PubAcks lost.
        async def under_way() -> bool:
            stored = (await admin.jetstream().stream_info(names.stream)).state.messages
            return stored >= 100

        await until(under_way)
        assert not load.done(), "the load finished before the kill; make it longer"
        leader = (await admin.jetstream().stream_info(names.stream)).cluster.leader  # type: ignore[union-attr]
        assert leader is not None
        cluster.node(leader).kill()
        at_kill = await EventStore(pool).head()

        assert await load > 0
        head = await EventStore(pool).head()
        assert head > at_kill  # events were written after the kill, and must be relayed

        async def relayed_everything() -> bool:
            return await relay.checkpoint() == head

        await until(relayed_everything, within=30)
        after = await admin.jetstream().stream_info(names.stream)
        assert after.cluster is not None and after.cluster.leader not in (None, leader)

        in_log = [position for _, position in await log_order(pool)]
        assert await stream_contents(admin, names) == [(str(p), p) for p in in_log]
        assert after.state.messages == len(in_log)  # and nothing else: no duplicate

        # The dead node comes back with its store and catches up with the others.
        cluster.node(leader).start()

        async def all_current() -> bool:
            info = await admin.jetstream().stream_info(names.stream)
            replicas = (info.cluster.replicas or []) if info.cluster else []
            return len(replicas) == 2 and all(p.current and not p.lag for p in replicas)

        await until(all_current, within=20)
    finally:
        await stop(*tasks)
        await link.close()
        with contextlib.suppress(Exception):
            await admin.jetstream().delete_stream(names.stream)
        await admin.close()
