"""A projection worker fed by JetStream instead of the Postgres log.

The relay stores events in the stream in log order, so the worker must apply
them in stream order too: it reads through an *ordered* consumer (no
redeliveries that could arrive after later messages), starting at the first
stream message past its checkpoint, found by binary search. Each batch is
applied with its checkpoint in one transaction and anything at or below the
checkpoint is skipped, so restarts and several workers on one instance apply
each event once.

Each message names the event before it in log order, so the worker checks
that what it reads goes on exactly from where it is. At a hole (a message
deleted from the stream, dropped by a limit, or lost by an older relay) it
applies what came before, never what comes after: it logs, holds, and reads
again from its checkpoint after a pause, in case the stream has been repaired
(re-created, so that the relay fills it again from the log).
"""

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from infra.eventstore import Checkpoint, RecordedEvent
from infra.metrics import PROJECTION_RUNNING, STREAM_HOLES
from infra.pgerrors import database_unavailable
from infra.projector import Projector
from infra.stream import Envelope, StreamNames, decode_envelope, ensure_stream
from infra.waker import sleep_until

log = logging.getLogger("carnet.nats_worker")


async def first_after(js: JetStreamContext, names: StreamNames, after: Checkpoint) -> int:
    """The stream sequence of the first message past `after` (last + 1 if none).

    A sequence whose message was deleted counts as the next message still there.
    """
    info = await js.stream_info(names.stream)
    lo, hi = info.state.first_seq, info.state.last_seq + 1
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            message = await js.get_msg(names.stream, mid, names.all_subjects, next=True)
        except NotFoundError:  # nothing at or after mid
            hi = mid
            continue
        if decode_envelope(message.data or b"").checkpoint > after:
            hi = mid
        else:
            lo = mid + 1
    return max(lo, 1)


class Hole(Exception):
    def __init__(self, names: StreamNames, at: Checkpoint, envelope: Envelope) -> None:
        super().__init__(
            f"hole in stream {names.stream}: event {envelope.position} follows "
            f"{envelope.previous}, but we are at {at}"
        )


class NatsProjector:
    def __init__(
        self,
        projector: Projector,
        nc: NATS,
        names: StreamNames | None = None,
        batch_size: int = 500,
        retry: float = 5.0,
    ) -> None:
        self.projector = projector
        self.nc = nc
        self.names = names or StreamNames()
        self.batch_size = batch_size
        self.retry = retry

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self.projector.ensure()
        js = self.nc.jetstream()
        if stop is None:
            stop = asyncio.Event()
        while not stop.is_set():
            try:
                await self._follow(js, stop)
            except Hole as e:
                log.error("projection %s: %s; reading again shortly", self.projector.name, e)
                PROJECTION_RUNNING.labels(self.projector.name).set(0)  # held, not advancing
                STREAM_HOLES.labels(self.projector.name).inc()
            except NatsError as e:  # NATS away, or the stream re-created under us
                log.warning("projection %s: %s; reading again shortly", self.projector.name, e)
            except Exception as e:
                if not database_unavailable(e):
                    raise  # a bug of ours: ProjectionFailed has stopped the projection
                log.warning("projection %s: %r; reading again shortly", self.projector.name, e)
            await sleep_until(stop, self.retry)

    async def _follow(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Apply from the checkpoint on, until stopped or at a hole (raised, after
        applying everything before it)."""
        await ensure_stream(js, self.names)
        at = await self.projector.checkpoint()
        subscription = await js.subscribe(
            self.names.all_subjects,
            stream=self.names.stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=await first_after(js, self.names, at),
            ),
        )
        try:
            while not stop.is_set():
                batch: list[RecordedEvent] = []
                hole: Hole | None = None
                for envelope in await self._next_batch(subscription):
                    if envelope.checkpoint <= at:
                        continue  # applied already (a restart, a repeat)
                    # None: sent before envelopes named their predecessor; take it on trust.
                    if envelope.previous not in (None, at):
                        hole = Hole(self.names, at, envelope)
                        break
                    batch.append(envelope.recorded())
                    at = envelope.checkpoint
                if batch:
                    await self.projector.apply_recorded(batch)
                if hole is not None:
                    raise hole
        finally:
            await subscription.unsubscribe()

    async def _next_batch(self, subscription: JetStreamContext.PushSubscription) -> list[Envelope]:
        batch: list[Envelope] = []
        timeout = 0.5
        while len(batch) < self.batch_size:
            try:
                message = await subscription.next_msg(timeout=timeout)
            except (NatsTimeout, TimeoutError):
                break
            batch.append(decode_envelope(message.data))
            timeout = 0.005  # take what is already here, then apply
        return batch
