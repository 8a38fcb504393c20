"""Publishes the committed log to NATS JetStream, in log order, exactly once.

Postgres stays the source of truth. Each message carries `Nats-Msg-Id` = the
event's position, so JetStream drops a repeat inside its duplicate window;
outside that window (a long outage) the relay never repeats itself because,
before every (re)start, it resumes after the last message the stream
actually holds rather than after its own checkpoint alone.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from infra.eventstore import Checkpoint, EventStore, RecordedEvent
from infra.metrics import RELAY_PUBLISHED
from infra.schema import SCHEMA
from infra.waker import sleep_until

log = logging.getLogger("carnet.relay")

RELAY_LOCK = 72810003


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One log event on the wire. Fields added later get defaults."""

    position: int
    tx: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes
    recorded_at: datetime
    metadata: dict[str, Any] = {}

    @classmethod
    def of(cls, e: RecordedEvent) -> "Envelope":
        return cls(
            position=e.position,
            tx=e.tx,
            originator_id=e.originator_id,
            originator_version=e.originator_version,
            topic=e.topic,
            state=e.state,
            recorded_at=e.recorded_at,
            metadata=e.metadata,
        )

    def recorded(self) -> RecordedEvent:
        return RecordedEvent(
            self.position,
            self.tx,
            self.originator_id,
            self.originator_version,
            self.topic,
            self.state,
            self.recorded_at,
            self.metadata,
        )


encode_envelope = msgspec.msgpack.Encoder().encode
decode_envelope = msgspec.msgpack.Decoder(Envelope).decode


@dataclass(frozen=True)
class StreamNames:
    stream: str = "CARNET"
    duplicate_window: float = 120.0  # seconds; JetStream's default

    @property
    def prefix(self) -> str:
        return self.stream.lower()

    def subject(self, topic: str) -> str:
        """'domain.agenda:Appointment.Booked' -> 'carnet.Appointment.Booked'."""
        return f"{self.prefix}.{topic.rsplit(':', 1)[-1]}"

    @property
    def all_subjects(self) -> str:
        return f"{self.prefix}.>"


async def ensure_stream(js: JetStreamContext, names: StreamNames) -> None:
    try:
        await js.stream_info(names.stream)
    except Exception:
        await js.add_stream(
            name=names.stream,
            subjects=[names.all_subjects],
            duplicate_window=names.duplicate_window,
        )


async def last_in_stream(js: JetStreamContext, names: StreamNames) -> Checkpoint | None:
    info = await js.stream_info(names.stream)
    if not info.state.last_seq:
        return None
    message = await js.get_msg(names.stream, seq=info.state.last_seq)
    envelope = decode_envelope(message.data or b"")
    return Checkpoint(envelope.tx, envelope.position)


class Relay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        nc: NATS,
        names: StreamNames | None = None,
        batch_size: int = 500,
        ack_timeout: float = 10.0,
    ) -> None:
        self.pool = pool
        self.nc = nc
        self.ack_timeout = ack_timeout
        self.js = nc.jetstream()
        self.names = names or StreamNames()
        self.store = EventStore(pool)
        self.batch_size = batch_size

    async def checkpoint(self) -> Checkpoint:
        row = await self.pool.fetchrow(
            f"SELECT tx, position FROM {SCHEMA}.relay_checkpoints WHERE stream = $1",
            self.names.stream,
        )
        return Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint()

    async def _save(self, checkpoint: Checkpoint) -> None:
        await self.pool.execute(
            f"""INSERT INTO {SCHEMA}.relay_checkpoints (stream, tx, position) VALUES ($1, $2, $3)
            ON CONFLICT (stream) DO UPDATE SET tx = $2, position = $3, updated_at = now()""",
            self.names.stream,
            checkpoint.tx,
            checkpoint.position,
        )

    async def resume_point(self) -> Checkpoint:
        await ensure_stream(self.js, self.names)
        ours = await self.checkpoint()
        theirs = await last_in_stream(self.js, self.names)
        if theirs is not None and theirs > ours:
            await self._save(theirs)  # published and acked, but we died before noting it
            return theirs
        return ours

    async def publish_batch(self, after: Checkpoint) -> tuple[Checkpoint, int]:
        """Publish the next batch; return the new checkpoint and how many were sent."""
        events = await self.store.read_after(after, self.batch_size)
        if not events:
            return after, 0
        acks = [
            await self.js.publish_async(
                self.names.subject(e.topic),
                encode_envelope(Envelope.of(e)),
                headers={"Nats-Msg-Id": str(e.position)},
            )
            for e in events
        ]
        # An ack that never comes (NATS went away mid-batch) must not hang us.
        async with asyncio.timeout(self.ack_timeout):
            await asyncio.gather(*acks)
        checkpoint = events[-1].checkpoint
        await self._save(checkpoint)  # only after every PubAck
        RELAY_PUBLISHED.inc(len(events))
        return checkpoint, len(events)

    async def catch_up(self) -> int:
        after = await self.resume_point()
        published = 0
        while True:
            after, sent = await self.publish_batch(after)
            if not sent:
                return published
            published += sent

    async def run(self, wake: asyncio.Event, idle: float = 0.5) -> None:
        """Publish until cancelled, as the one active relay of this stream.

        Every `carnet run` starts a relay; a session advisory lock per stream
        lets one publish while the others stand by, so the stream's order is
        the log's. If the lock's connection drops, another relay takes over.
        """
        key = (RELAY_LOCK, self.names.stream)
        while True:
            async with self.pool.acquire() as conn:
                held = await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", *key)
                if not held:
                    await asyncio.sleep(idle * 4)
                    continue
                try:
                    await self._publish(wake, idle)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", *key)

    async def _publish(self, wake: asyncio.Event, idle: float) -> None:
        """Publish until cancelled; back off while NATS is unreachable."""
        backoff = 0.1
        after: Checkpoint | None = None
        while True:
            try:
                if after is None:
                    after = await self.resume_point()
                after, sent = await self.publish_batch(after)
                backoff = 0.1
                if sent:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("relay: %s: %s; retrying in %.1fs", type(e).__name__, e, backoff)
                after = None  # re-read where the stream really is before going on
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            wake.clear()
            await sleep_until(wake, idle)
