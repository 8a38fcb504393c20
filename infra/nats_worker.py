"""A projection worker fed by JetStream instead of the Postgres log.

The relay stores events in the stream in log order, so the worker must apply
them in stream order too: it reads through an *ordered* consumer (no
redeliveries that could arrive after later messages), starting at the first
stream message past its checkpoint, found by binary search. Each batch is
applied with its checkpoint in one transaction and anything at or below the
checkpoint is skipped, so restarts and several workers on one instance apply
each event once.
"""

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.client import JetStreamContext

from infra.eventstore import Checkpoint, RecordedEvent
from infra.projector import Projector
from infra.relay import StreamNames, decode_envelope, ensure_stream

log = logging.getLogger("carnet.nats_worker")


async def first_after(js: JetStreamContext, names: StreamNames, after: Checkpoint) -> int:
    """The stream sequence of the first message past `after` (last + 1 if none)."""
    info = await js.stream_info(names.stream)
    lo, hi = info.state.first_seq, info.state.last_seq + 1
    while lo < hi:
        mid = (lo + hi) // 2
        message = await js.get_msg(names.stream, seq=mid)
        if decode_envelope(message.data or b"").recorded().checkpoint > after:
            hi = mid
        else:
            lo = mid + 1
    return max(lo, 1)


class NatsProjector:
    def __init__(
        self,
        projector: Projector,
        nc: NATS,
        names: StreamNames | None = None,
        batch_size: int = 500,
    ) -> None:
        self.projector = projector
        self.nc = nc
        self.names = names or StreamNames()
        self.batch_size = batch_size

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self.projector.ensure()
        js = self.nc.jetstream()
        await ensure_stream(js, self.names)
        start = await first_after(js, self.names, await self.projector.checkpoint())
        subscription = await js.subscribe(
            self.names.all_subjects,
            stream=self.names.stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            ),
        )
        try:
            while stop is None or not stop.is_set():
                batch = await self._next_batch(subscription)
                if batch:
                    await self.projector.apply_recorded(batch)
        finally:
            await subscription.unsubscribe()

    async def _next_batch(
        self, subscription: JetStreamContext.PushSubscription
    ) -> list[RecordedEvent]:
        batch: list[RecordedEvent] = []
        timeout = 0.5
        while len(batch) < self.batch_size:
            try:
                message = await subscription.next_msg(timeout=timeout)
            except (NatsTimeout, TimeoutError):
                break
            batch.append(decode_envelope(message.data).recorded())
            timeout = 0.005  # take what is already here, then apply
        return batch
