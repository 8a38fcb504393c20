"""Benchmark 6: Relay.catch_up() messages/s to a fresh JetStream stream, against raw publishes.

Ours: `Relay(pool, nc, names).catch_up()` of a realistic log (tests/bench/history.py) to a
fresh stream: read 500 committed events (EventStore.read_after), encode each envelope
(msgpack), publish each with `Nats-Msg-Id` = its position and the fencing header
(`Nats-Expected-Last-Sequence` on the first, `Nats-Expected-Last-Msg-Id` on the others)
through the relay's `Acks` (`nc.publish` with a reply inbox, one future per batch), await
the 500 PubAcks, save the checkpoint, again until the log is published.
Baseline: the same payloads, prepared beforehand, to the same subjects with the same
`Nats-Msg-Id` headers, through `js.publish_async` from the same connection, awaited in
batches of the same size; nothing else.

Each side publishes to a stream created just before it and deleted after it (the same
unique name, so no duplicate window carries over). The NATS server is CARNET_NATS_URL's,
or an embedded one started for the run.
"""

import asyncio
import contextlib
import statistics
import time

import asyncpg
import nats
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from infra.bootstrap import open_pool
from infra.eventstore import Checkpoint, EventStore, RecordedEvent
from infra.relay import Relay
from infra.schema import SCHEMA
from infra.settings import Settings
from infra.stream import Envelope, StreamNames, encode_envelope, ensure_stream
from tests.bench.common import (
    RUN_ID,
    Config,
    Result,
    Run,
    fresh_database,
    median_rate,
    paired_ratios,
    rounds,
    say,
)
from tests.bench.history import fill_log

GOAL = 0.8
RAW = "raw js.publish_async, batches awaited"
OURS = "ours: Relay.catch_up"

Message = tuple[str, bytes, dict[str, str]]


async def whole_log(pool: asyncpg.Pool) -> list[RecordedEvent]:
    store, after, out = EventStore(pool), Checkpoint(), []
    while batch := await store.read_after(after, 5000):
        out += batch
        after = batch[-1].checkpoint
    return out


async def fresh_stream(js: JetStreamContext, names: StreamNames) -> None:
    with contextlib.suppress(Exception):
        await js.delete_stream(names.stream)
    await ensure_stream(js, names)


async def held(js: JetStreamContext, names: StreamNames) -> int:
    return int((await js.stream_info(names.stream)).state.messages)


async def publish_raw(js: JetStreamContext, batches: list[list[Message]]) -> int:
    sent = 0
    for batch in batches:
        acks = [await js.publish_async(s, p, headers=h) for s, p, h in batch]
        await asyncio.wait_for(asyncio.gather(*acks), 10)
        sent += len(batch)
    return sent


async def components(pool: asyncpg.Pool, nc: NATS, names: StreamNames) -> None:
    """Diagnostics: what Relay.catch_up does besides publishing, each over the whole log.

    The relay does these one after the other, batch after batch, so their times add up.
    """
    relay = Relay(pool, nc, names)
    store, after, batches, encode, read = EventStore(pool), Checkpoint(), 0, 0.0, 0.0
    while True:
        began = time.perf_counter()
        events = await store.read_after(after, relay.batch_size)
        read += time.perf_counter() - began
        if not events:
            break
        began = time.perf_counter()
        for e in events:
            names.subject(e.topic), encode_envelope(Envelope.of(e))
        encode += time.perf_counter() - began
        after, batches = events[-1].checkpoint, batches + 1
    began = time.perf_counter()
    for _ in range(batches):
        await relay._save(after)
    save = time.perf_counter() - began
    await pool.execute(f"DELETE FROM {SCHEMA}.relay_checkpoints WHERE stream = $1", names.stream)
    say(
        f"    besides publishing, per whole log: read_after in {batches} pages "
        f"{read * 1000:.0f} ms, subjects + envelopes {encode * 1000:.0f} ms, "
        f"{batches} checkpoint saves {save * 1000:.0f} ms"
    )


async def bench_relay(server: str, nats_url: str, cfg: Config) -> Result:
    say(
        f"\n[6] relay messages/s: Relay.catch_up vs raw js.publish_async "
        f"({cfg.relay_bookings:,} bookings, {cfg.relay_rounds} rounds, NATS {nats_url})"
    )
    names = StreamNames(stream=f"CARNET_BENCH_{RUN_ID.upper()}")
    async with fresh_database(server, "relay") as url:
        pool = await open_pool(url, Settings(pool_min=2, pool_max=cfg.concurrency))
        nc: NATS = await nats.connect(nats_url, connect_timeout=5)
        js = nc.jetstream()
        try:
            total = await fill_log(pool, cfg.relay_bookings, cfg.concurrency)
            size = Relay(pool, nc, names).batch_size
            messages: list[Message] = [
                (
                    names.subject(e.topic),
                    encode_envelope(Envelope.of(e)),
                    {"Nats-Msg-Id": str(e.position)},
                )
                for e in await whole_log(pool)
            ]
            batches = [messages[i : i + size] for i in range(0, len(messages), size)]
            average = sum(len(p) for _, p, _ in messages) / len(messages)

            async def raw() -> Run:
                await fresh_stream(js, names)
                began, cpu = time.perf_counter(), time.process_time()
                sent = await publish_raw(js, batches)
                run = Run(sent, time.perf_counter() - began, cpu=time.process_time() - cpu)
                assert await held(js, names) == total, "the stream lost messages"
                await js.delete_stream(names.stream)
                return run

            async def ours() -> Run:
                await pool.execute(
                    f"DELETE FROM {SCHEMA}.relay_checkpoints WHERE stream = $1", names.stream
                )
                await fresh_stream(js, names)
                relay = Relay(pool, nc, names)
                began, cpu = time.perf_counter(), time.process_time()
                sent = await relay.catch_up()
                run = Run(sent, time.perf_counter() - began, cpu=time.process_time() - cpu)
                assert sent == total and await held(js, names) == total, "not every event"
                await js.delete_stream(names.stream)
                return run

            runs = await rounds([(RAW, raw), (OURS, ours)], cfg.relay_rounds)
            ratio = statistics.median(paired_ratios(runs[OURS], runs[RAW]))
            if cfg.diagnose or ratio < GOAL:
                await components(pool, nc, names)
        finally:
            with contextlib.suppress(Exception):
                await js.delete_stream(names.stream)
            await nc.close()
            await pool.close()
    return Result(
        "[6] Relay.catch_up msgs/s",
        median_rate(runs[OURS]),
        median_rate(runs[RAW]),
        "raw publish_async msgs/s",
        "/s",
        GOAL,
        f"{total:,} events of {average:.0f} bytes on average to a fresh file-backed stream, "
        f"batches of {size}; client CPU {runs[OURS][-1].cpu_per_op * 1e6:.0f} µs/msg "
        f"(raw: {runs[RAW][-1].cpu_per_op * 1e6:.0f})",
        paired_ratios(runs[OURS], runs[RAW]),
    )
