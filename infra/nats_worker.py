"""A projection worker fed by JetStream instead of the Postgres log.

A durable pull consumer per projection instance. Each fetched batch is applied
with its checkpoint in one transaction and acknowledged only afterwards, so a
crash between the two only causes a redelivery, which the checkpoint skips.
"""

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from infra.projector import Projector
from infra.relay import StreamNames, decode_envelope, ensure_stream

log = logging.getLogger("carnet.nats_worker")


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
        self.durable = f"projection-{projector.name}"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self.projector.ensure()
        js = self.nc.jetstream()
        await ensure_stream(js, self.names)
        subscription = await js.pull_subscribe(
            self.names.all_subjects, durable=self.durable, stream=self.names.stream
        )
        while stop is None or not stop.is_set():
            try:
                messages = await subscription.fetch(self.batch_size, timeout=0.5)
            except (NatsTimeout, TimeoutError):
                continue
            events = [decode_envelope(m.data).recorded() for m in messages]
            events.sort(key=lambda e: e.checkpoint)
            await self.projector.apply_recorded(events)
            for m in messages:
                await m.ack()
