"""Publishes the committed log to NATS JetStream, in log order, exactly once.

Postgres stays the source of truth, and the stream is provably a prefix of
the log. Each message carries `Nats-Msg-Id` = the event's position and is
stored only if the stream ends exactly where the relay expects: the first
message of a batch with `Nats-Expected-Last-Sequence` (the stream sequence the
relay last saw), every other one with `Nats-Expected-Last-Msg-Id` = the
previous event's position. So if message k is lost, k+1 is refused rather
than stored after a hole, and a relay that lost its lease cannot fork the
stream. On any failure the relay re-reads where the stream really ends and
goes on from there, never from its own notes alone.

Why not `Nats-Expected-Last-Msg-Id` on every message: the server keeps the
last message id in memory only. An empty stream has none, and after a restart
it is rebuilt from the messages inside the duplicate window only (nats-server
`stream.go`, `rebuildDedupe`), so after a long idle spell every such publish
would be refused. The sequence survives restarts. A duplicate (same
`Nats-Msg-Id` inside the window) is acknowledged as such before the msg-id
check; since nats-server 2.12 the sequence check comes first, so a stale
duplicate may be refused instead: either way nothing is stored twice.

Each envelope names the previous event too (`prev_tx`, `prev_position`), so a
NATS-fed projector can tell a hole from the next event.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

from infra.eventstore import Checkpoint, Connection, EventStore
from infra.metrics import RELAY_PUBLISHED, RELAY_REFUSED
from infra.schema import SCHEMA
from infra.stream import (
    Envelope,
    StreamMoved,
    StreamNames,
    Tail,
    encode_envelope,
    ensure_stream,
    stream_tail,
)
from infra.waker import sleep_until

log = logging.getLogger("carnet.relay")

RELAY_LOCK = 72810003
_TRY_LOCK = "SELECT pg_try_advisory_lock($1, hashtext($2))"
_UNLOCK = "SELECT pg_advisory_unlock($1, hashtext($2))"
# The two-key form of an advisory lock shows as classid, objid, objsubid = 2.
_STILL_HELD = """SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
    AND pid = pg_backend_pid() AND classid = $1 AND objid = hashtext($2)::oid
    AND objsubid = 2 AND granted)"""
# JetStream's answers when the stream does not end where the publisher expected.
_WRONG_LAST = {10070, 10071, 10164}


class PubAck(msgspec.Struct):
    """JetStream's answer to one publish: where it was stored, or why not."""

    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode_ack = msgspec.json.Decoder(PubAck).decode


class _Batch:
    """The answers awaited for one batch of publishes, with one future for them all.

    One future per batch, not per message: per-message futures, their
    done-callbacks and a gather over them were a fifth of the relay's CPU.
    """

    __slots__ = ("answers", "done", "first", "left")

    def __init__(self, first: int, size: int) -> None:
        self.first = first  # the reply token of the batch's first message
        self.answers: list[PubAck | None] = [None] * size
        self.left = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class Acks:
    """Publishes to JetStream, batch by batch, and collects the server's answers.

    Not `js.publish_async`: in nats-py 2.16 the future of a refused publish
    never resolves (`APIError.from_error` raises inside its reply handler,
    nats-io/nats.py#985), so a refusal would cost the whole ack timeout.
    Replies go to `<inbox>.<token>`, one token per message, counting up across
    batches, so a late answer to an abandoned batch is told apart and dropped.
    """

    def __init__(self, nc: NATS, stream: str) -> None:
        self.nc = nc
        self.stream = stream
        self.inbox = ""
        self.sent = 0
        self.batch: _Batch | None = None

    async def begin(self, size: int) -> None:
        """Start a batch of `size` publishes; a batch still awaited is abandoned."""
        if not self.inbox:
            self.inbox = self.nc.new_inbox()
            await self.nc.subscribe(f"{self.inbox}.*", cb=self._answer)
        self.batch = _Batch(self.sent + 1, size)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self.sent += 1
        reply = f"{self.inbox}.{self.sent}"
        await self.nc.publish(subject, payload, reply=reply, headers=headers)

    async def answers(self) -> list[PubAck]:
        """Every answer of the batch, in publish order; raises at the first refusal."""
        batch = self.batch
        assert batch is not None, "begin() first"
        try:
            await batch.done
        finally:
            self.batch = None
            batch.done.cancel()  # nobody is left to see a later failure
        return batch.answers  # type: ignore[return-value]  # all set once done

    async def _answer(self, msg: Msg) -> None:
        batch = self.batch
        if batch is None or batch.done.done():
            return
        try:
            i = int(msg.subject[len(self.inbox) + 1 :]) - batch.first
        except ValueError:
            return
        if not 0 <= i < len(batch.answers) or batch.answers[i] is not None:
            return  # an answer to an abandoned batch, or a repeat
        if msg.headers and msg.headers.get("Status") == "503":
            batch.fail(NoStreamResponseError())  # no stream takes this subject
            return
        try:
            answer = _decode_ack(msg.data)
        except msgspec.DecodeError as e:
            batch.fail(e)
            return
        if answer.error is not None:
            batch.fail(_refusal(self.stream, answer.error))  # the rest would be refused too
            return
        batch.answers[i] = answer
        batch.left -= 1
        if not batch.left:
            batch.done.set_result(None)


def _refusal(stream: str, error: dict[str, Any]) -> Exception:
    if error.get("err_code") in _WRONG_LAST:
        RELAY_REFUSED.labels("stream-moved").inc()
        return StreamMoved(f"stream {stream}: {error.get('description')}")
    return APIError(error.get("code"), error.get("description"), error.get("err_code"))


def _drop(conn: Connection) -> None:
    """Close a pooled connection rather than return it to the pool."""
    # Already released if its connection was lost: asyncpg then closed it itself.
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class Relay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        nc: NATS,
        names: StreamNames | None = None,
        batch_size: int = 500,
        ack_timeout: float = 10.0,
        lease_timeout: float = 2.0,
    ) -> None:
        self.pool = pool
        self.nc = nc
        self.ack_timeout = ack_timeout
        self.lease_timeout = lease_timeout
        self.js = nc.jetstream()
        self.names = names or StreamNames()
        self.acks = Acks(nc, self.names.stream)
        self.subjects: dict[str, str] = {}  # topic -> subject, built once each
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

    async def resume_point(self) -> Tail:
        """Where the stream really ends; our checkpoint follows it, even backwards.

        A stream that never held anything gets the whole log, so that it is a
        prefix of it. One that held messages and lost them all (purged, aged
        out) can only be continued from our own checkpoint.
        """
        await ensure_stream(self.js, self.names)
        ours = await self.checkpoint()
        seq, theirs = await stream_tail(self.js, self.names)
        if theirs is None:
            if seq:
                log.warning("relay: stream %s is empty; going on from %s", self.names.stream, ours)
            theirs = ours if seq else Checkpoint()
        if theirs != ours:
            if theirs < ours:
                log.warning(
                    "relay: stream %s ends at %s, before %s", self.names.stream, theirs, ours
                )
            await self._save(theirs)
        return Tail(seq, theirs)

    async def publish_batch(self, tail: Tail) -> tuple[Tail, int]:
        """Publish the next batch after `tail`; return the new tail and how many were sent."""
        events = await self.store.read_after(tail.at, self.batch_size)
        if not events:
            return tail, 0
        acks, subjects = self.acks, self.subjects
        await acks.begin(len(events))
        previous = tail.at
        expected = {"Nats-Expected-Last-Sequence": str(tail.seq)}
        for e in events:
            position = str(e.position)
            subject = subjects.get(e.topic) or self._subject(e.topic)
            payload = encode_envelope(Envelope.of(e, previous))
            await acks.publish(subject, payload, {"Nats-Msg-Id": position, **expected})
            expected = {"Nats-Expected-Last-Msg-Id": position}
            previous = e.checkpoint
        # An ack that never comes (NATS went away mid-batch) must not hang us.
        async with asyncio.timeout(self.ack_timeout):
            answers = await acks.answers()
        checkpoint = events[-1].checkpoint
        await self._save(checkpoint)  # only after every PubAck
        RELAY_PUBLISHED.inc(len(events))
        return Tail(answers[-1].seq, checkpoint), len(events)

    def _subject(self, topic: str) -> str:
        subject = self.subjects[topic] = self.names.subject(topic)
        return subject

    async def catch_up(self) -> int:
        tail = await self.resume_point()
        published = 0
        while True:
            try:
                tail, sent = await self.publish_batch(tail)
            except StreamMoved:
                tail = await self.resume_point()
                continue
            if not sent:
                return published
            published += sent

    async def run(self, wake: asyncio.Event, idle: float = 0.5) -> None:
        """Publish until cancelled, as the one active relay of this stream.

        Every `carnet run` starts a relay; a session advisory lock per stream
        lets one publish while the others stand by, so the stream's order is
        the log's. If the lock's connection drops, another relay takes over,
        and this one stops publishing at its next batch (it checks the lock is
        still its own before each); a batch already on its way is refused by
        the stream, whose end has moved.
        """
        while True:
            try:
                await self._lead(wake, idle)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("relay: %s: %s; standing by", type(e).__name__, e)
            await asyncio.sleep(idle * 4)

    async def _lead(self, wake: asyncio.Event, idle: float) -> None:
        """Publish while this relay holds the stream's lock; return once it does not."""
        key = (RELAY_LOCK, self.names.stream)
        async with self.pool.acquire() as conn:
            held: bool | None = None
            try:
                async with asyncio.timeout(self.lease_timeout):
                    held = bool(await conn.fetchval(_TRY_LOCK, *key))
                if held:
                    await self._publish(wake, idle, lambda: self._still_held(conn, key))
            finally:
                if held is not False:
                    await self._let_go(conn, key)

    async def _still_held(self, conn: Connection, key: tuple[int, str]) -> bool:
        try:
            async with asyncio.timeout(self.lease_timeout):
                return bool(await conn.fetchval(_STILL_HELD, *key))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("relay: cannot check the lock of %s (%s)", self.names.stream, e)
            return False

    async def _let_go(self, conn: Connection, key: tuple[int, str]) -> None:
        """Unlock, or drop the session: a pooled session must never keep the lock."""
        try:
            async with asyncio.timeout(self.lease_timeout):
                await conn.execute(_UNLOCK, *key)
        except asyncio.CancelledError:
            _drop(conn)
            raise
        except Exception:
            _drop(conn)

    async def _publish(
        self, wake: asyncio.Event, idle: float, still_held: Callable[[], Awaitable[bool]]
    ) -> None:
        """Publish while the lock is ours; back off while NATS is unreachable."""
        backoff = 0.1
        tail: Tail | None = None
        while True:
            if not await still_held():
                log.warning("relay: lost the lock of stream %s; standing by", self.names.stream)
                RELAY_REFUSED.labels("lost-lock").inc()
                return
            try:
                if tail is None:
                    tail = await self.resume_point()
                tail, sent = await self.publish_batch(tail)
                backoff = 0.1
                if sent:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # StreamMoved among others
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                log.warning("relay: %s; retrying in %.1fs", reason, backoff)
                tail = None  # re-read where the stream really is before going on
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            wake.clear()
            await sleep_until(wake, idle)
